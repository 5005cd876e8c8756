import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import { S3BlobStore } from '../../functions/adapters/s3-blob-store';
import type { BatchApi } from '../../functions/core/ports';
import { shardsOf } from '../../functions/core/shards';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { type FixtureWork, fixtureWork } from '../support/e2e';
import { ManualTime } from '../support/manual-time';
import { outputIds } from '../support/run-checks';

/**
 * A dataset of two objects cut into many small shards (shardBytes 1,024), prepared three lanes at a
 * time over many short steps, through the whole state machine on manual time: bad lines in several
 * shards keep their exact line numbers, custom_ids used again in another shard, within one shard, and in
 * another object are caught (the earliest use wins), and every other record completes.
 */

const time = new ManualTime();
let env: LocalEnvironment;
let dir: string;
let work: FixtureWork;

const record = (id: string) => JSON.stringify({ id, content: `question ${id} of the sharded dataset` });
/** Object a: 120 lines of about 60 bytes, so about 7 shards. */
const A: Record<number, string> = {};
for (let line = 1; line <= 120; line++) A[line] = record(`a${line}`);
A[5] = '{"id":"a5", "content": broken'; // shard 0
A[8] = record('a3'); // used first on line 3, in shard 0 too (settled with shard 0, before the rest)
A[70] = '{"id":"a70" "content":"no comma"}'; // a later shard
A[100] = '["not", "an", "object"]';
A[50] = record('a2'); // used first on line 2, in shard 0
A[110] = record('a2'); // a third use
A[90] = record('a85'); // the same shard, or the one before
/** Object b: 10 lines, one shard. */
const B: Record<number, string> = {};
for (let line = 1; line <= 10; line++) B[line] = record(`b${line}`);
B[3] = 'not json at all';
B[7] = record('a10'); // used first in object a

const EXPECTED_ERRORS = [
  'a:5:invalid_json',
  'a:8:duplicate_id',
  'a:50:duplicate_id',
  'a:70:invalid_json',
  'a:90:duplicate_id',
  'a:100:not_an_object',
  'a:110:duplicate_id',
  'b:3:invalid_json',
  'b:7:duplicate_id',
].sort();

const bodyOf = (lines: Record<number, string>) =>
  `${Object.keys(lines)
    .map(Number)
    .sort((x, y) => x - y)
    .map((n) => lines[n])
    .join('\n')}\n`;

/** The OpenAI port, telling `created` of each batch it creates (its other calls as they are). */
function onCreate(api: BatchApi, created: () => void): BatchApi {
  return new Proxy(api, {
    get: (target, property, receiver) => {
      if (property !== 'createBatch') return Reflect.get(target, property, receiver);
      return async (input: Parameters<BatchApi['createBatch']>[0]) => {
        created();
        return target.createBatch(input);
      };
    },
  });
}

async function text(key: string): Promise<string> {
  const object = await env.s3.client.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: key }));
  return (await object.Body?.transformToString()) ?? '';
}

async function keysUnder(prefix: string): Promise<string[]> {
  const listed = await env.s3.client.send(
    new ListObjectsV2Command({ Bucket: env.s3.bucket, Prefix: prefix }),
  );
  return (listed.Contents ?? []).map((o) => o.Key ?? '');
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-sharded-'));
  env = await startLocalEnvironment(
    dir,
    time.emulator({ validationMs: 1000, requestsPerSecond: 100, finalizingMs: 10, seed: 3 }),
  );
  work = await fixtureWork('sharded');
  for (const [name, lines] of [
    ['a', A],
    ['b', B],
  ] as const)
    await env.s3.client.send(
      new PutObjectCommand({
        Bucket: env.s3.bucket,
        Key: `inputs/sharded/${name}.jsonl`,
        Body: bodyOf(lines),
      }),
    );
}, 60_000);

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('a sharded run', () => {
  it('prepares shards in parallel lanes, keeps exact lines, catches duplicate ids across shards, loses nothing', async () => {
    const lanes: number[] = [];
    /** What happened, in order: a Prepare step, the first Settle call, a batch created. */
    const events: string[] = [];
    const options = time.runOptions(env, {
      budgetMs: 3,
      onState: (state) => {
        if (process.env.DEBUG_STATES) process.stderr.write(`${state}\n`);
      },
      wrap: {
        handlers: (handlers) => ({
          ...handlers,
          Prepare: async (event: unknown) => {
            lanes.push((event as { lane: number }).lane);
            const prepared = await handlers.Prepare(event);
            events.push('prepare');
            return prepared;
          },
          Settle: async (event: unknown) => {
            events.push('settle');
            return handlers.Settle(event);
          },
        }),
        openai: (api) => onCreate(api, () => events.push('create')),
      },
    });
    // The steps' clock moves a millisecond each time it is read, so that a step's budget of 3 ms ends
    // after a few records and every lane takes many steps (the emulator's batches barely move with it).
    const now = () => {
      time.clock.advance(1);
      return time.clock.now();
    };
    const result = await runLocally(
      env,
      work.loaded,
      'inputs/sharded/',
      'sharded-1',
      { ...options, now },
      {
        definition: work.definition,
      },
    );

    const run = await new DynamoRunStore(env.dynamo.client, env.dynamo.table).getRun('sharded-1');
    expect(run?.dataset).toMatchObject({ objects: 2, lanes: 3 });
    expect(run?.dataset.shards).toBeGreaterThanOrEqual(7);
    expect(new Set(lanes)).toEqual(new Set([0, 1, 2]));
    expect(lanes.length).toBeGreaterThan(20);
    // Shard 0's parts went to OpenAI while later shards were still preparing, before Settle.
    const firstCreate = events.indexOf('create');
    expect(firstCreate).toBeGreaterThan(-1);
    expect(firstCreate).toBeLessThan(events.indexOf('settle'));
    expect(events.slice(firstCreate).filter((e) => e === 'prepare').length).toBeGreaterThan(3);

    const good = [
      ...Object.entries(A)
        .filter(([line]) => ![5, 8, 50, 70, 90, 100, 110].includes(Number(line)))
        .map(([line]) => `a${line}`),
      ...Object.entries(B)
        .filter(([line]) => ![3, 7].includes(Number(line)))
        .map(([line]) => `b${line}`),
    ].sort();
    expect(await outputIds(env, 'sharded-1')).toEqual(good);
    expect(result.output).toMatchObject({
      summary: { records: 130, outputs: good.length, errors: 9, balanced: true },
    });

    // Each error names its object beside its line (lines count per object: a's lines 3 and 7 are good).
    const errors: { line: number; code: string; message: string; object: string }[] = [];
    for (const key of await keysUnder('runs/sharded-1/errors/'))
      for (const line of (await text(key)).split('\n')) if (line) errors.push(JSON.parse(line));
    const nameOf = (object: string) => object.slice('inputs/sharded/'.length, -'.jsonl'.length);
    expect(errors.map((e) => `${nameOf(e.object)}:${e.line}:${e.code}`).sort()).toEqual(EXPECTED_ERRORS);
    const message = (line: number) =>
      errors.find((e) => e.line === line && e.code === 'duplicate_id')?.message;
    expect(message(8)).toContain('already used on line 3');
    expect(message(50)).toContain('already used on line 2');
    expect(message(110)).toContain('already used on line 2');
    expect(message(90)).toContain('already used on line 85');
    expect(message(7)).toBe(
      'line 7 of inputs/sharded/b.jsonl: id "a10" was already used on line 10 of inputs/sharded/a.jsonl; ids must be unique within a run',
    );
  }, 240_000);
});

/**
 * A prefix of many small objects: packed into a few shards (shardBytes 1,024), each prepared into a
 * few parts, not a shard and a batch an object. Bad lines, ids used again in the same pack and in
 * another, and requests OpenAI fails, each come back as an error naming its own object and line.
 */
describe('a run over a prefix of many small objects', () => {
  const OBJECTS = 48;
  const name = (i: number) => `p${String(i).padStart(2, '0')}`;
  /** Object i holds 1 to 4 records (ids `<name>-<line>`), with these lines in their stead. */
  const SPECIAL: Record<string, string> = {
    'p05:2': '{"id":"p05-2", broken',
    'p19:3': '"a string"',
    'p09:1': record('p08-1'), // used first in the object before (the same pack)
    'p41:1': record('p02-1'), // used first in an early pack
    'p12:1': JSON.stringify({ id: 'p12-1', content: 'fail me [[emulator:fail]]' }),
    'p30:2': JSON.stringify({ id: 'p30-2', content: '[[emulator:fail]] please' }),
  };
  const GZIPPED = [19, 21, 22];
  const linesOf = (i: number) =>
    Array.from(
      { length: (i % 4) + 1 },
      (_, at) => SPECIAL[`${name(i)}:${at + 1}`] ?? record(`${name(i)}-${at + 1}`),
    );

  it('packs them into a few shards and batches, and names each error by its own object and line', async () => {
    for (let i = 0; i < OBJECTS; i++) {
      const body = `${linesOf(i).join('\n')}\n`;
      await env.s3.client.send(
        new PutObjectCommand({
          Bucket: env.s3.bucket,
          Key: `inputs/packed/${name(i)}.jsonl`,
          // A few are gzip (their names do not say so: their first bytes do), packed with the rest.
          Body: GZIPPED.includes(i) ? gzipSync(body) : body,
        }),
      );
    }
    let batches = 0;
    const options = time.runOptions(env, {
      wrap: {
        openai: (api) => onCreate(api, () => batches++),
      },
    });
    const result = await runLocally(env, work.loaded, 'inputs/packed/', 'packed-1', options, {
      definition: work.definition,
    });

    const run = await new DynamoRunStore(env.dynamo.client, env.dynamo.table).getRun('packed-1');
    const blobs = new S3BlobStore(env.s3.client, env.s3.bucket);
    expect(run?.dataset.objects).toBe(OBJECTS);
    const shards = run?.dataset.shards ?? 0;
    expect(shards).toBeGreaterThan(3);
    expect(shards).toBeLessThan(OBJECTS / 4);
    // The dataset has gzip objects in packs with plain ones (read inflated, into the same parts).
    const planned = await Promise.all(
      Array.from({ length: OBJECTS }, async (_, i) => {
        const head = await blobs.head(`inputs/packed/${name(i)}.jsonl`);
        if (!head) throw new Error(`no object ${i}`);
        return { ...head, gzip: GZIPPED.includes(i) };
      }),
    );
    const packs = [...shardsOf(planned, 1024)];
    expect(packs).toHaveLength(shards);
    const inPacks = packs
      .filter((p) => p.objects > 1)
      .flatMap((p) => planned.slice(p.object, p.object + p.objects));
    expect(inPacks.filter((o) => o.gzip).length).toBeGreaterThan(0);
    // A batch or two a pack (a part sent early, and the rest), not a batch an object.
    expect(batches).toBeGreaterThanOrEqual(shards);
    expect(batches).toBeLessThanOrEqual(shards + 2);

    const records = Array.from({ length: OBJECTS }, (_, i) => linesOf(i).length).reduce((a, b) => a + b, 0);
    const bad = ['p05:2', 'p19:3', 'p09:1', 'p41:1', 'p12:1', 'p30:2'];
    const good = Array.from({ length: OBJECTS }, (_, i) =>
      linesOf(i).flatMap((_, at) => (bad.includes(`${name(i)}:${at + 1}`) ? [] : [`${name(i)}-${at + 1}`])),
    )
      .flat()
      .sort();
    expect(await outputIds(env, 'packed-1')).toEqual(good);
    expect(result.output).toMatchObject({
      summary: { records, outputs: good.length, errors: bad.length, balanced: true },
    });
    const errors: { line: number; code: string; message: string; object: string; stage: string }[] = [];
    for (const key of await keysUnder('runs/packed-1/errors/'))
      for (const line of (await text(key)).split('\n')) if (line) errors.push(JSON.parse(line));
    const nameOf = (object: string) => object.slice('inputs/packed/'.length, -'.jsonl'.length);
    expect(errors.map((e) => `${nameOf(e.object)}:${e.line}:${e.stage}:${e.code}`).sort()).toEqual(
      [
        'p05:2:dataset:invalid_json',
        'p19:3:dataset:not_an_object',
        'p09:1:request:duplicate_id',
        'p41:1:request:duplicate_id',
        'p12:1:openai:emulated_failure',
        'p30:2:openai:emulated_failure',
      ].sort(),
    );
    const duplicate = (object: string) => errors.find((e) => e.object.endsWith(`/${object}.jsonl`))?.message;
    expect(duplicate('p09')).toBe(
      'line 1 of inputs/packed/p09.jsonl: id "p08-1" was already used on line 1 of inputs/packed/p08.jsonl; ids must be unique within a run',
    );
    expect(duplicate('p41')).toBe(
      'line 1 of inputs/packed/p41.jsonl: id "p02-1" was already used on line 1 of inputs/packed/p02.jsonl; ids must be unique within a run',
    );
  }, 240_000);
});
