import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { GetObjectTaggingCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import { S3BlobStore } from '../../functions/adapters/s3-blob-store';
import { DatasetError } from '../../functions/core/errors';
import { GZIP_EXPANSION, partitionsFor, partitionsOf } from '../../functions/core/id-files';
import type { BlobInfo } from '../../functions/core/ports';
import { runKeys } from '../../functions/core/run';
import { MAX_PACK_OBJECTS, planCodec, SHARD_PART_SPAN, type Shard } from '../../functions/core/shards';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import {
  DuplicateDatasetError,
  datasetHash,
  datasetObjects,
  eventKey,
  HASH_CONTENT_UP_TO,
  hashesContent,
  MAX_OBJECTS,
  register,
  scanDataset,
  writePlan,
} from '../../functions/steps/register';
import { packObjects } from '../../functions/steps/storage';
import { type LocalDynamo, type LocalS3, startDynamo, startS3 } from '../../local/stand-ins';

/** Objects larger than this are split into shards in these tests. */
const SHARD_BYTES = 1024;

let s3: LocalS3;
let dynamo: LocalDynamo;
let dir: string;
let deps: StepDeps<unknown>;
const put = (key: string, body: string | Uint8Array) =>
  s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));

/** The keys of a dataset's objects, as Register lists them. */
async function keysOf(key: string, from: StepDeps<unknown> = deps): Promise<string[]> {
  const keys: string[] = [];
  for await (const object of datasetObjects(from, key)) keys.push(object.key);
  return keys;
}

/** Bytes [start, start + length) of an object, read from `start` on as Prepare reads a plan line. */
async function bytesAt(key: string, start: number, length: number): Promise<Buffer> {
  let out = Buffer.alloc(0);
  for await (const chunk of deps.blobs.read(key, start)) {
    out = Buffer.concat([out, chunk]);
    if (out.length >= length) break;
  }
  return out.subarray(0, length);
}

/** Shard n of a run's plan, with one ranged read of the plan's width. */
async function shardOf(runId: string, n: number): Promise<Shard> {
  const run = await deps.runs.getRun(runId);
  if (!run) throw new Error(`no run ${runId}`);
  const width = run.dataset.planWidth;
  return planCodec.decode(await bytesAt(runKeys(runId).plan, n * width, width));
}

/** Every shard of a run's plan, checking that each line is exactly the plan's width. */
async function planOf(runId: string): Promise<Shard[]> {
  const run = await deps.runs.getRun(runId);
  if (!run) throw new Error(`no run ${runId}`);
  const chunks: Uint8Array[] = [];
  for await (const chunk of deps.blobs.read(runKeys(runId).plan)) chunks.push(chunk);
  const text = Buffer.concat(chunks);
  const width = run.dataset.planWidth;
  expect(text.length).toBe(run.dataset.shards * width);
  const shards: Shard[] = [];
  for (let n = 0; n < run.dataset.shards; n++) {
    const line = text.subarray(n * width, (n + 1) * width);
    expect(line.at(-1)).toBe(0x0a);
    shards.push(planCodec.decode(line));
  }
  return shards;
}

/** Lines of JSON up to about `bytes` bytes. */
const jsonl = (prefix: string, bytes: number) =>
  Array.from({ length: Math.ceil(bytes / 40) }, (_, i) =>
    JSON.stringify({ id: `${prefix}-${i}`, content: 'x'.repeat(12) }),
  ).join('\n');

const registerRun = (runId: string, dataset: string) =>
  register(deps, { dataset, runId, resume: false, execution: runId });

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-register-'));
  [s3, dynamo] = await Promise.all([startS3(dir, 'register-test'), startDynamo('register-runs')]);
  // Register uses the blob store and the run store; the rest of the dependencies are never called.
  deps = {
    blobs: new S3BlobStore(s3.client, s3.bucket),
    runs: new DynamoRunStore(dynamo.client, dynamo.table),
    log: () => {},
    now: () => Date.now(),
    bucket: s3.bucket,
    work: defineWork({ name: 'r', shardBytes: SHARD_BYTES, prepareConcurrency: 4 }),
  } as unknown as StepDeps<unknown>;
});

afterAll(async () => {
  await Promise.all([s3?.stop(), dynamo?.stop()]);
  rmSync(dir, { recursive: true, force: true });
});

describe('the dataset a run reads', () => {
  it('is the object at the key, or the non-empty objects under a prefix ending in /, in key order', async () => {
    await put('in/one.jsonl', '{"id":1}\n');
    await put('in/many/b.jsonl', '{"id":2}\n');
    await put('in/many/a.jsonl', '{"id":1}\n');
    await put('in/many/empty.jsonl', '');
    expect(await keysOf('in/one.jsonl')).toEqual(['in/one.jsonl']);
    expect(await keysOf('in/many/')).toEqual(['in/many/a.jsonl', 'in/many/b.jsonl']);
  });

  it('is refused, naming the location, when nothing is there', async () => {
    await expect(keysOf('in/nothing.jsonl')).rejects.toThrow(
      new DatasetError(
        'No dataset at s3://register-test/in/nothing.jsonl: no such object, and no objects under it as a prefix.',
      ),
    );
  });

  it('is exactly the key given: an object is that object, never others that share its beginning', async () => {
    await put('exact/data', '{"id":"now"}\n');
    await put('exact/data-old.jsonl', '{"id":"old"}\n');
    await put('exact/data/inside.jsonl', '{"id":"inside"}\n');
    expect(await keysOf('exact/data')).toEqual(['exact/data']);
    expect(await keysOf('exact/data/')).toEqual(['exact/data/inside.jsonl']);
  });

  it('is not a prefix unless asked for with a trailing /, and the refusal suggests the / form', async () => {
    await put('loose/data-old.jsonl', '{"id":"old"}\n');
    await put('loose/set/a.jsonl', '{"id":"a"}\n');
    await expect(keysOf('loose/data')).rejects.toThrow(
      new DatasetError(
        'No dataset at s3://register-test/loose/data: no such object (keys that start with it: loose/data-old.jsonl). Give a whole key, or a prefix ending in "/".',
      ),
    );
    await expect(keysOf('loose/set')).rejects.toThrow(
      new DatasetError(
        'No dataset at s3://register-test/loose/set: no such object. Objects are under it as a prefix: give "s3://register-test/loose/set/" (with the trailing /) to read every object under it.',
      ),
    );
    expect(await keysOf('loose/set/')).toEqual(['loose/set/a.jsonl']);
  });

  it(`reads up to ${MAX_OBJECTS} objects under a prefix, and refuses more, naming the prefix and the limit`, async () => {
    // The real limit, counted over a fake listing (100,001 objects in s3rver would take minutes).
    const listing = (count: number) =>
      ({
        ...deps,
        blobs: {
          async *list(prefix: string): AsyncGenerator<BlobInfo> {
            for (let i = 0; i < count; i++)
              yield { key: `${prefix}${String(i).padStart(6, '0')}.jsonl`, size: 3, etag: `e${i}` };
          },
        },
      }) as unknown as StepDeps<unknown>;
    expect(await keysOf('wide/', listing(MAX_OBJECTS))).toHaveLength(100_000);
    await expect(keysOf('wide/', listing(MAX_OBJECTS + 1))).rejects.toThrow(
      new DatasetError(
        'The prefix s3://register-test/wide/ holds more than 100,000 objects; a run reads at most 100,000. Combine them into fewer, larger files, or start one run for each part of the prefix.',
      ),
    );
  });

  it('is identified by its content, whatever its key', async () => {
    await put('x/copy-1.jsonl', '{"id":"same"}\n');
    await put('x/copy-2.jsonl', '{"id":"same"}\n');
    await put('x/other.jsonl', '{"id":"other"}\n');
    const hash = async (key: string) => datasetHash(deps, await scanDataset(deps, key));
    expect(await hash('x/copy-1.jsonl')).toBe(await hash('x/copy-2.jsonl'));
    expect(await hash('x/copy-1.jsonl')).not.toBe(await hash('x/other.jsonl'));
    expect(await hash('x/copy-1.jsonl')).toMatch(/^sha256:[0-9a-f]{64}$/);
  });

  it('is identified by its content up to 1 GiB in 1,000 objects, beyond either by its ETags', () => {
    expect(HASH_CONTENT_UP_TO).toEqual({ bytes: 1024 ** 3, objects: 1000 });
    expect(hashesContent(1000, 1024 ** 3)).toBe(true);
    expect(hashesContent(1001, 1)).toBe(false);
    expect(hashesContent(1, 1024 ** 3 + 1)).toBe(false);
  });
});

describe('registering a run', () => {
  it('lists a prefix of 1,100 objects into packs of small objects, writes one plan line a shard and the object list, and keeps only the counts in the run', async () => {
    // More than a listing page (1,000 keys) and than HASH_CONTENT_UP_TO.objects, so that the listing is
    // paged and read twice.
    const objects = 1100;
    const keys = Array.from({ length: objects }, (_, i) => `many/${String(i).padStart(5, '0')}.jsonl`);
    const body = (i: number) => `{"id":"m${i}"}\n`;
    for (let i = 0; i < keys.length; i += 250)
      await Promise.all(keys.slice(i, i + 250).map((k, j) => put(k, body(i + j))));
    const sizes = keys.map((_, i) => Buffer.byteLength(body(i)));
    const bytes = sizes.reduce((n, size) => n + size, 0);
    // The packs, found here on their own: objects one after the other while they fit in shardBytes.
    const packs: { first: number; objects: number }[] = [];
    let packBytes = 0;
    sizes.forEach((size, i) => {
      const last = packs.at(-1);
      if (last && packBytes + size <= SHARD_BYTES && last.objects < MAX_PACK_OBJECTS) {
        last.objects += 1;
        packBytes += size;
      } else {
        packs.push({ first: i, objects: 1 });
        packBytes = size;
      }
    });
    expect(packs.length).toBeGreaterThan(10);
    expect(packs.length).toBeLessThan(objects / 10);

    expect(await registerRun('many-1', 'many/')).toEqual({
      runId: 'many-1',
      prepared: false,
      objects,
      lanes: [0, 1, 2, 3],
    });
    const run = await deps.runs.getRun('many-1');
    expect(run).toMatchObject({
      status: 'preparing',
      prepared: false,
      dataset: {
        key: 'many/',
        objects,
        bytes,
        shards: packs.length,
        partitions: partitionsFor(bytes),
        lanes: 4,
      },
      nextPart: packs.length * SHARD_PART_SPAN,
      settle: null,
    });
    // More than 1,000 objects: identified by their ETags, not read.
    expect(run?.datasetHash).toMatch(/^etags:[0-9a-f]{64}$/);
    expect((await planOf('many-1')).map((s) => ({ first: s.object, objects: s.objects }))).toEqual(packs);
    for (const n of [0, 1, packs.length - 1]) {
      const pack = packs[n];
      if (!pack) throw new Error(`no pack ${n}`);
      const shard = await shardOf('many-1', n);
      expect(shard).toEqual({
        shard: n,
        object: pack.first,
        key: keys[pack.first],
        size: sizes[pack.first],
        etag: expect.any(String),
        start: 0,
        end: sizes[pack.first],
        gzip: false,
        objects: pack.objects,
      });
      // Its objects, from the object list, by one ranged read.
      if (!run) throw new Error('no run');
      const listed = await packObjects(deps.blobs, run, shard);
      expect(listed.map((o) => o.key)).toEqual(keys.slice(pack.first, pack.first + pack.objects));
      expect(listed.map((o) => o.size)).toEqual(sizes.slice(pack.first, pack.first + pack.objects));
      const heads = await Promise.all(listed.map((o) => deps.blobs.head(o.key)));
      expect(listed.map((o) => o.etag)).toEqual(heads.map((h) => h?.etag));
    }
    // The plan is an intermediate object: kept while the run runs, expired after it ends.
    const { TagSet } = await s3.client.send(
      new GetObjectTaggingCommand({ Bucket: s3.bucket, Key: runKeys('many-1').plan }),
    );
    expect(TagSet).toEqual([{ Key: 'openai-batch-intermediate', Value: 'running' }]);

    // A retry of the step answers the run as it is; so does a resume of it (it is preparing: taken over).
    expect(await registerRun('many-1', 'many/')).toMatchObject({ objects, lanes: [0, 1, 2, 3] });
    expect(
      await register(deps, { dataset: undefined, runId: 'many-1', resume: true, execution: 'many-1-resume' }),
    ).toEqual({ runId: 'many-1', prepared: false, objects, lanes: [0, 1, 2, 3] });
  }, 60_000);

  it('splits an object larger than shardBytes into byte ranges, keeps a gzip one whole, and marks every gzip one', async () => {
    const big = jsonl('big', 5000);
    // Random text does not compress: the gzip object is larger than shardBytes.
    const gzip = gzipSync(
      Array.from({ length: 40 }, (_, i) =>
        JSON.stringify({ id: `g${i}`, content: randomBytes(60).toString('base64') }),
      ).join('\n'),
    );
    expect(gzip.length).toBeGreaterThan(SHARD_BYTES);
    const small = '{"id":"small"}\n';
    await put('mixed/a-big.jsonl', big);
    await put('mixed/b-packed.jsonl.gz', gzip);
    await put('mixed/c-small.jsonl', small);
    await put('mixed/d-empty.jsonl', '');
    const tiny = gzipSync(Buffer.from('{"id":"tiny"}\n'));
    await put('mixed/e-tiny.jsonl.gz', tiny);

    expect(await registerRun('mixed-1', 's3://register-test/mixed/')).toEqual({
      runId: 'mixed-1',
      prepared: false,
      objects: 4,
      lanes: [0, 1, 2, 3],
    });
    const bigBytes = Buffer.byteLength(big);
    const ranges = Math.ceil(bigBytes / SHARD_BYTES);
    const run = await deps.runs.getRun('mixed-1');
    expect(run?.dataset).toMatchObject({
      key: 'mixed/',
      objects: 4,
      bytes: bigBytes + gzip.length + small.length + tiny.length,
      shards: ranges + 2,
    });
    expect(run?.nextPart).toBe((ranges + 2) * SHARD_PART_SPAN);
    // The gzip objects' stored bytes are what the id partitions count ten times over.
    expect((await scanDataset(deps, 'mixed/')).gzipBytes).toBe(gzip.length + tiny.length);
    expect(run?.datasetHash).toMatch(/^sha256:/); // 4 objects, a few KB: read
    const plan = await planOf('mixed-1');
    expect(plan.map((s) => [s.shard, s.object, s.key, s.start, s.end, s.gzip, s.objects])).toEqual([
      ...Array.from({ length: ranges }, (_, r) => [
        r,
        0,
        'mixed/a-big.jsonl',
        r * SHARD_BYTES,
        Math.min(bigBytes, (r + 1) * SHARD_BYTES),
        false,
        1,
      ]),
      [ranges, 1, 'mixed/b-packed.jsonl.gz', 0, gzip.length, true, 1],
      // The small plain object and the tiny gzip one (ten times its size) make a pack.
      [ranges + 1, 2, 'mixed/c-small.jsonl', 0, small.length, false, 2],
    ]);
    expect(await shardOf('mixed-1', ranges)).toEqual(plan[ranges]);
    // A small gzip object is marked too, in the object list: a pack's lane inflates it as it reads it.
    if (!run) throw new Error('no run');
    const pack = plan[ranges + 1];
    if (!pack) throw new Error('no pack');
    expect((await packObjects(deps.blobs, run, pack)).map((o) => [o.key, o.gzip])).toEqual([
      ['mixed/c-small.jsonl', false],
      ['mixed/e-tiny.jsonl.gz', true],
    ]);
  });

  it('sizes the id partitions by the data as JSONL, a gzip object counted as ten times its stored bytes', () => {
    const MiB = 1024 * 1024;
    expect(partitionsOf({ bytes: 100 * MiB, gzipBytes: 0 })).toBe(2);
    // 100 MiB stored, of which 40 gzip: 60 + 400 MiB of JSONL, in partitions of 64 MiB.
    expect(partitionsOf({ bytes: 100 * MiB, gzipBytes: 40 * MiB })).toBe(8);
    expect(partitionsOf({ bytes: 200 * 1024 * MiB, gzipBytes: 200 * 1024 * MiB })).toBe(1024);
    expect(GZIP_EXPANSION).toBe(10);
  });

  it('lanes are as many as the shards when they are fewer than prepareConcurrency', async () => {
    await put('one/only.jsonl', '{"id":"only"}\n');
    expect(await registerRun('one-1', 'one/only.jsonl')).toEqual({
      runId: 'one-1',
      prepared: false,
      objects: 1,
      lanes: [0],
    });
    expect((await deps.runs.getRun('one-1'))?.dataset).toMatchObject({
      key: 'one/only.jsonl',
      objects: 1,
      shards: 1,
      lanes: 1,
      partitions: 1,
    });
  });

  it('refuses a dataset another run took, and leaves no plan behind', async () => {
    await put('dup/first.jsonl', '{"id":"dup"}\n');
    await put('dup/second.jsonl', '{"id":"dup"}\n');
    await registerRun('dup-1', 'dup/first.jsonl');
    await expect(registerRun('dup-2', 'dup/second.jsonl')).rejects.toBeInstanceOf(DuplicateDatasetError);
    expect(await deps.blobs.head(runKeys('dup-2').plan)).toBeNull();
    expect(await deps.runs.getRun('dup-2')).toBeNull();
  });

  it('refuses a listing that changed between its two passes, and deletes the plan it wrote', async () => {
    await put('moving/a.jsonl', '{"id":"a"}\n');
    await put('moving/b.jsonl', '{"id":"b"}\n');
    const scan = await scanDataset(deps, 'moving/');
    await put('moving/c.jsonl', '{"id":"c"}\n'); // an upload that was not over
    // A short listing is kept from the first pass; a long one (listed: null) is listed again.
    await expect(writePlan(deps, 'moving-1', 'moving/', { ...scan, listed: null })).rejects.toThrow(
      'The dataset s3://register-test/moving/ changed while the run was registered',
    );
    expect(await deps.blobs.head(runKeys('moving-1').plan)).toBeNull();
  });
});

describe('an S3 event key (autoStart)', () => {
  it('is the key as it came when that object exists, else its URL-decoded form', async () => {
    await put('ev/red flower.jsonl', '{"id":1}\n');
    await put('ev/c++.jsonl', '{"id":1}\n');
    await put('ev/100%.jsonl', '{"id":1}\n');
    await put('ev/données é.jsonl', '{"id":1}\n');
    // Encoded as S3 encodes keys for SNS, SQS and Lambda.
    expect(await eventKey(deps, 'ev/red+flower.jsonl')).toBe('ev/red flower.jsonl');
    expect(await eventKey(deps, 'ev/c%2B%2B.jsonl')).toBe('ev/c++.jsonl');
    expect(await eventKey(deps, 'ev/100%25.jsonl')).toBe('ev/100%.jsonl');
    expect(await eventKey(deps, 'ev/donn%C3%A9es+%C3%A9.jsonl')).toBe('ev/données é.jsonl');
    // As EventBridge documents them: the key itself, even where it reads as encoding.
    expect(await eventKey(deps, 'ev/c++.jsonl')).toBe('ev/c++.jsonl');
    expect(await eventKey(deps, 'ev/100%.jsonl')).toBe('ev/100%.jsonl');
    expect(await eventKey(deps, 'ev/red flower.jsonl')).toBe('ev/red flower.jsonl');
    // Neither exists: the key as it came, for the "No dataset" message.
    expect(await eventKey(deps, 'ev/none+here.jsonl')).toBe('ev/none+here.jsonl');
    expect(await keysOf(await eventKey(deps, 'ev/red+flower.jsonl'))).toEqual(['ev/red flower.jsonl']);
  });

  it('starts no run for a folder, even one that holds data, nor for an empty object, and names the key', async () => {
    const fromEvent = (runId: string, dataset: string) =>
      register(deps, { dataset, runId, resume: false, execution: runId, fromS3Event: true });
    await put('ev/folder/', '{"id":"f"}\n'); // an object of data under a folder's key
    await put('ev/folder/a.jsonl', '{"id":"a"}\n');
    await put('ev/empty-folder/', ''); // the S3 console's "Create folder"
    await put('ev/empty.jsonl', '');
    // Read as a prefix, ev/folder/ would be a run over a.jsonl too, racing a.jsonl's own run.
    // A DatasetError: the state machine does not retry it, and MarkFailed says why.
    await expect(fromEvent('folder-1', 'ev/folder/')).rejects.toMatchObject({
      name: 'DatasetError',
      message:
        'No run for s3://register-test/ev/folder/: its key ends in "/", which names a folder, and autoStart starts a run for each object uploaded, never for a folder. To run what this object holds, copy it to a key that does not end in "/".',
    });
    await expect(fromEvent('folder-2', 'ev/empty-folder/')).rejects.toMatchObject({
      name: 'DatasetError',
      message: expect.stringMatching(/^No run for s3:\/\/register-test\/ev\/empty-folder\/: /),
    });
    await expect(fromEvent('empty-1', 'ev/empty.jsonl')).rejects.toMatchObject({
      name: 'DatasetError',
      message: 'The dataset s3://register-test/ev/empty.jsonl is empty: there is nothing to run.',
    });
    for (const runId of ['folder-1', 'folder-2', 'empty-1']) {
      expect(await deps.runs.getRun(runId)).toBeNull();
      expect(await deps.blobs.head(runKeys(runId).plan)).toBeNull();
    }
    // Started by hand, a key ending in "/" is a prefix: its objects of data.
    expect((await registerRun('folder-3', 'ev/folder/')).objects).toBe(1);
  });
});
