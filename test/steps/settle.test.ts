import { describe, expect, it } from 'vitest';
import { type Counts, zeroCounts } from '../../functions/core/accounting';
import { parsePartLine, partLine } from '../../functions/core/collect';
import { CostLimitError, DatasetError } from '../../functions/core/errors';
import { type IdEntry, IdFileBuilder } from '../../functions/core/id-files';
import type { BlobStore, RunStore } from '../../functions/core/ports';
import { type LaneCheckpoint, newPart, type Run, runKeys } from '../../functions/core/run';
import { planCodec, SHARD_PART_SPAN, type Shard, shardPart } from '../../functions/core/shards';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import { CHUNK_CHARS, jsonlChunks, settle } from '../../functions/steps/settle';
import { writeAll } from '../../functions/steps/storage';
import { localDeps, RecordingNotifier } from '../../local/runner';
import { localEnvironment } from '../support/local-environment';
import { runFixture } from '../support/runs';

/**
 * The Settle step through the real stand-ins (s3rver, DynamoDB Local), on a dataset prepared by hand: the
 * plan, lane checkpoints, id files and held parts a sharded prepare leaves.
 */

const shared = localEnvironment('openai-batch-settle-', { kind: 'emulator', options: {} });

const A = 'inputs/a.jsonl';
const B = 'inputs/b.jsonl';
const SHARDS: Shard[] = [
  { shard: 0, object: 0, key: A, size: 100, etag: '"a"', start: 0, end: 50, gzip: false, objects: 1 },
  { shard: 1, object: 0, key: A, size: 100, etag: '"a"', start: 50, end: 100, gzip: false, objects: 1 },
  { shard: 2, object: 1, key: B, size: 80, etag: '"b"', start: 0, end: 80, gzip: false, objects: 1 },
];

/** One request a prepare lane wrote: its shard, dataset line, custom_id and part. */
interface Placed {
  readonly shard: number;
  readonly line: number;
  readonly id: string;
  readonly part: number;
}

const placed = (shard: number, line: number, id: string, k = 0): Placed => ({
  shard,
  line,
  id,
  part: shardPart(shard, k),
});

/**
 * Shard 0 (a.jsonl from its start) repeats r1 within itself; shard 1 (a.jsonl further on) repeats r2 of
 * shard 0; shard 2 (b.jsonl) uses r1 a third time, r5 of shard 1, and its second part holds only ids used
 * before (r3, r4): it is left empty.
 */
const REQUESTS: Placed[] = [
  placed(0, 1, 'r1'),
  placed(0, 2, 'r2'),
  placed(0, 3, 'r1'),
  placed(0, 4, 'r3'),
  placed(1, 5, 'r2'),
  placed(1, 6, 'r4'),
  placed(1, 7, 'r5'),
  placed(2, 1, 'r1'),
  placed(2, 2, 'r6'),
  placed(2, 3, 'r5'),
  placed(2, 4, 'r7'),
  placed(2, 5, 'r3', 1),
  placed(2, 6, 'r4', 1),
];

const TOKENS = 10;
const PARTITIONS = 4;
const requestJson = (id: string) =>
  JSON.stringify({
    custom_id: id,
    method: 'POST',
    url: '/v1/chat/completions',
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: `question ${id}` }] },
  });
const entryOf = (r: Placed): IdEntry => ({
  ...r,
  bytes: Buffer.byteLength(requestJson(r.id)) + 1,
  tokens: TOKENS,
});

const counts = (fields: Partial<Counts>): Counts => ({ ...zeroCounts(), ...fields });

const laneCheckpoint = (lane: number, fields: Partial<Counts>, estimatedTokens: number): LaneCheckpoint => ({
  lane,
  shard: lane,
  position: null,
  starts: [],
  nextPart: 0,
  inflated: false,
  counts: counts(fields),
  estimatedTokens,
  done: true,
  firstShardSettled: false,
  firstPartsSent: false,
  firstShardLeft: false,
});

function workOf(maxCostUsd?: number) {
  return defineWork({
    name: 'settle',
    model: 'gpt-4o-mini',
    upload: (record) => record as { id: string },
    ...(maxCostUsd === undefined ? {} : { maxCostUsd }),
  });
}

type Deps = StepDeps<Record<string, unknown>>;

function depsOf(
  options: {
    budgetMs?: number;
    maxCostUsd?: number;
    log?: (message: string, fields?: Record<string, unknown>) => void;
    wrap?: { blobs?: (b: BlobStore) => BlobStore; runs?: (r: RunStore) => RunStore };
  } = {},
): Deps {
  let clock = 1_000_000;
  return localDeps(
    shared.env,
    workOf(options.maxCostUsd),
    {
      now: () => ++clock, // a millisecond a look: a budget of 0 allows one unit of work a call
      budgetMs: options.budgetMs ?? 600_000,
      ...(options.log ? { log: options.log } : {}),
      ...(options.wrap ? { wrap: options.wrap } : {}),
    },
    new RecordingNotifier(),
  ) as Deps;
}

/** Writes what a sharded prepare leaves for `requests`, and the run record in its `settle: null` state. */
/** `legacyLines`: part lines files as written before they held the ids (dataset line numbers only). */
async function prepared(
  deps: Deps,
  runId: string,
  requests: readonly Placed[] = REQUESTS,
  legacyLines = false,
): Promise<void> {
  const keys = runKeys(runId);
  const width = planCodec.width(SHARDS);
  await writeAll(deps.blobs, keys.plan, SHARDS.map((s) => planCodec.encode(s, width)).join(''));
  // Id files as the prepare steps flushed them: shard 0 in one, shard 1 in one plus a step that ran again
  // (r4 of line 6 recorded twice), shard 2 in two chunks.
  const files: { key: string; entries: Placed[] }[] = [
    { key: keys.idFile(0, 1, 0), entries: requests.filter((r) => r.shard === 0) },
    { key: keys.idFile(1, 5, 0), entries: requests.filter((r) => r.shard === 1) },
    { key: keys.idFile(1, 6, 0), entries: requests.filter((r) => r.shard === 1 && r.line === 6) },
    { key: keys.idFile(2, 1, 0), entries: requests.filter((r) => r.shard === 2 && r.line <= 4) },
    { key: keys.idFile(2, 1, 1), entries: requests.filter((r) => r.shard === 2 && r.line > 4) },
  ];
  for (const file of files) {
    if (file.entries.length === 0) continue;
    const builder = new IdFileBuilder(PARTITIONS);
    for (const r of file.entries) builder.add(entryOf(r));
    const { body, index } = builder.take();
    await deps.blobs.write(file.key, body);
    await writeAll(deps.blobs, `${file.key}.idx`, JSON.stringify(index));
  }
  const byPart = new Map<number, Placed[]>();
  for (const r of requests) {
    const inPart = byPart.get(r.part);
    if (inPart) inPart.push(r);
    else byPart.set(r.part, [r]);
  }
  for (const [part, placedIn] of byPart) {
    await writeAll(deps.blobs, keys.requests(part), placedIn.map((r) => `${requestJson(r.id)}\n`).join(''));
    const entry = (r: Placed) => (legacyLines ? String(r.line) : partLine(r.line, r.id));
    const linesKey = legacyLines ? keys.lines(part) : keys.entries(part);
    await writeAll(deps.blobs, linesKey, placedIn.map((r) => `${entry(r)}\n`).join(''));
  }
  await deps.runs.addParts(
    runId,
    [...byPart].map(([part, placedIn]) => ({
      ...newPart({
        part,
        generation: 0,
        model: 'gpt-4o-mini',
        requests: placedIn.length,
        bytes: placedIn.reduce((n, r) => n + entryOf(r).bytes, 0),
        estimatedTokens: placedIn.length * TOKENS,
      }),
      held: true,
    })),
  );
  // Lane 0 prepared shards 0 and 2, lane 1 shard 1 (and found one bad line there).
  const lane0 = requests.filter((r) => r.shard !== 1).length;
  const lane1 = requests.length - lane0;
  const parts0 = new Set(requests.filter((r) => r.shard !== 1).map((r) => r.part)).size;
  await writeAll(
    deps.blobs,
    keys.lane(0),
    JSON.stringify(
      laneCheckpoint(
        0,
        { records: lane0, requests: lane0, submittedRequests: lane0, parts: parts0 },
        lane0 * TOKENS,
      ),
    ),
  );
  await writeAll(
    deps.blobs,
    keys.lane(1),
    JSON.stringify(
      laneCheckpoint(
        1,
        {
          ...(requests.length > 0 ? { records: lane1 + 1, invalidRecords: 1, errors: 1 } : {}),
          requests: lane1,
          submittedRequests: lane1,
          parts: byPart.size - parts0,
        },
        lane1 * TOKENS,
      ),
    ),
  );
  const run: Run = {
    ...runFixture(runId),
    bucket: shared.env.s3.bucket,
    dataset: {
      key: 'inputs/',
      objects: 2,
      bytes: 180,
      shards: 3,
      planWidth: width,
      objectWidth: 0,
      partitions: PARTITIONS,
      lanes: 2,
    },
    nextPart: SHARDS.length * SHARD_PART_SPAN,
  };
  const created = await deps.runs.createRun(run, false);
  expect(created.created).toBe(true);
}

/** Calls Settle until it answers settled; the number of calls. */
async function settleAll(
  deps: Deps,
  runId: string,
  groupEntries?: number,
  dropRun?: number,
): Promise<number> {
  for (let calls = 1; calls < 500; calls++) {
    const sizes = { ...(groupEntries ? { groupEntries } : {}), ...(dropRun ? { dropRun } : {}) };
    if ((await settle(deps, { runId, ...sizes })).settled) return calls;
  }
  throw new Error('Settle never settled');
}

/** What Settle leaves: the run's counts and progress, its parts, and every object of the run (ids as "RUN"). */
async function outcome(deps: Deps, runId: string) {
  const run = await deps.runs.getRun(runId);
  if (!run) throw new Error(`no run ${runId}`);
  const parts = (await deps.runs.listParts(runId))
    .sort((a, b) => a.part - b.part)
    .map((p) => ({
      part: p.part,
      requests: p.requests,
      bytes: p.bytes,
      estimatedTokens: p.estimatedTokens,
      status: p.status,
      held: p.held,
    }));
  const objects: Record<string, string> = {};
  for await (const object of deps.blobs.list(runKeys(runId).prefix)) {
    let text = '';
    for await (const chunk of deps.blobs.read(object.key)) text += Buffer.from(chunk).toString('utf8');
    objects[object.key.replace(runId, 'RUN')] = text;
  }
  return {
    run: {
      counts: run.counts,
      estimatedTokens: run.estimatedTokens,
      estimatedCostUsd: run.estimatedCostUsd,
      prepared: run.prepared,
      status: run.status,
      settle: run.settle,
    },
    parts,
    objects,
  };
}

const linesOf = (text: string | undefined) => (text ?? '').split('\n').filter(Boolean);

/** The errors/ lines Settle wrote, parsed. */
const duplicateErrors = (objects: Record<string, string>) =>
  Object.entries(objects)
    .filter(([key]) => key.includes('/errors/duplicates-'))
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .flatMap(([, text]) => linesOf(text).map((line) => JSON.parse(line) as Record<string, unknown>));

const RULE = 'ids must be unique within a run';

/** Mutations of the stores (writes, deletes, run and part writes), the k-th of which throws when armed. */
function crashing(k: number) {
  let seen = 0;
  const tick = () => {
    seen += 1;
    if (seen === k) throw new Error(`crash at write ${k}`);
  };
  const wrap = <T extends object>(target: T, names: readonly string[]): T =>
    new Proxy(target, {
      get: (object, property, receiver) => {
        const value = Reflect.get(object, property, receiver);
        if (typeof value !== 'function' || !names.includes(String(property))) return value;
        return async (...args: unknown[]) => {
          tick();
          return value.apply(object, args);
        };
      },
    });
  return {
    wrap: {
      blobs: (blobs: BlobStore) => wrap(blobs, ['write', 'delete']),
      runs: (runs: RunStore) => wrap(runs, ['putRun', 'putPart']),
    },
    seen: () => seen,
  };
}

describe('the Settle step', () => {
  it('drops every later use of an id from its part, names both lines, and releases the parts', async () => {
    const deps = depsOf();
    await prepared(deps, 'dups');
    expect(await settleAll(deps, 'dups')).toBe(1);
    const { run, parts, objects } = await outcome(deps, 'dups');

    const errors = duplicateErrors(objects);
    // The dataset has two objects: each error names its own object (the line's), and the first use's.
    expect(errors.map((e) => [e.id, e.line, e.object, e.message])).toEqual(
      expect.arrayContaining([
        ['r1', 3, A, `line 3 of ${A}: id "r1" was already used on line 1 of ${A}; ${RULE}`],
        ['r2', 5, A, `line 5 of ${A}: id "r2" was already used on line 2 of ${A}; ${RULE}`],
        ['r1', 1, B, `line 1 of ${B}: id "r1" was already used on line 1 of ${A}; ${RULE}`],
        ['r5', 3, B, `line 3 of ${B}: id "r5" was already used on line 7 of ${A}; ${RULE}`],
        ['r3', 5, B, `line 5 of ${B}: id "r3" was already used on line 4 of ${A}; ${RULE}`],
        ['r4', 6, B, `line 6 of ${B}: id "r4" was already used on line 6 of ${A}; ${RULE}`],
      ]),
    );
    expect(errors).toHaveLength(6); // r4 of shard 1, recorded twice, is one use
    expect(errors[0]).toEqual({
      id: errors[0]?.id,
      line: errors[0]?.line,
      object: errors[0]?.object,
      statusCode: null,
      requestId: null,
      batchId: null,
      response: null,
      stage: 'request',
      code: 'duplicate_id',
      message: errors[0]?.message,
      status: 'failed',
    });

    const requestsOf = (part: number) =>
      linesOf(objects[runKeys('RUN').requests(part)]).map((l) => JSON.parse(l).custom_id);
    // Each kept request's lines entry: its dataset line and its id, aligned with the request file.
    const linesOfPart = (part: number) =>
      linesOf(objects[runKeys('RUN').entries(part)]).map((text) => {
        const { line, id } = parsePartLine(text);
        return `${line}:${id}`;
      });
    expect([requestsOf(0), linesOfPart(0)]).toEqual([
      ['r1', 'r2', 'r3'],
      ['1:r1', '2:r2', '4:r3'],
    ]);
    expect([requestsOf(shardPart(1, 0)), linesOfPart(shardPart(1, 0))]).toEqual([
      ['r4', 'r5'],
      ['6:r4', '7:r5'],
    ]);
    expect([requestsOf(shardPart(2, 0)), linesOfPart(shardPart(2, 0))]).toEqual([
      ['r6', 'r7'],
      ['2:r6', '4:r7'],
    ]);
    // The part whose every request was a later use: done, with nothing in it, and no files.
    expect(objects[runKeys('RUN').requests(shardPart(2, 1))]).toBeUndefined();
    expect(objects[runKeys('RUN').entries(shardPart(2, 1))]).toBeUndefined();
    expect(Object.keys(objects).filter((k) => k.includes('/state/settle/'))).toEqual([]);

    const bytes = (ids: string[]) => ids.reduce((n, id) => n + Buffer.byteLength(requestJson(id)) + 1, 0);
    expect(parts).toEqual([
      {
        part: 0,
        requests: 3,
        bytes: bytes(['r1', 'r2', 'r3']),
        estimatedTokens: 30,
        status: 'pending',
        held: false,
      },
      {
        part: shardPart(1, 0),
        requests: 2,
        bytes: bytes(['r4', 'r5']),
        estimatedTokens: 20,
        status: 'pending',
        held: false,
      },
      {
        part: shardPart(2, 0),
        requests: 2,
        bytes: bytes(['r6', 'r7']),
        estimatedTokens: 20,
        status: 'pending',
        held: false,
      },
      { part: shardPart(2, 1), requests: 0, bytes: 0, estimatedTokens: 0, status: 'done', held: false },
    ]);

    expect(run.counts).toEqual(
      counts({
        records: 14,
        invalidRecords: 1,
        requests: 13,
        submittedRequests: 7,
        refusedRequests: 6,
        errors: 7,
        parts: 4,
      }),
    );
    expect(run.estimatedTokens).toBe(70);
    expect(run.estimatedCostUsd).toBeGreaterThan(0);
    expect(run.prepared).toBe(true);
    expect(run.status).toBe('running');
    expect(run.settle?.duplicates).toBe(6);
    // Every record ends once: in a part still to send, or as an error line.
    expect(run.counts.submittedRequests + run.counts.errors).toBe(run.counts.records);
  });

  it('gives the same files and counts one unit of work a call, in partition groups of any size', async () => {
    const reference = depsOf();
    await prepared(reference, 'whole');
    await settleAll(reference, 'whole');
    const expected = await outcome(reference, 'whole');
    const dropKeys = (o: typeof expected) =>
      Object.keys(o.objects).filter((k) => k.includes('/state/drops/') || k.includes('/errors/duplicates-'));

    for (const groupEntries of [1, 5]) {
      const runId = `steps-${groupEntries}`;
      const deps = depsOf({ budgetMs: 0 });
      await prepared(deps, runId);
      const calls = await settleAll(deps, runId, groupEntries);
      const got = await outcome(deps, runId);
      // Smaller groups write more, smaller files: the errors they hold, and what is dropped, are the same.
      expect(
        duplicateErrors(got.objects)
          .map((e) => e.message)
          .sort(),
      ).toEqual(
        duplicateErrors(expected.objects)
          .map((e) => e.message)
          .sort(),
      );
      expect(got.run).toEqual(expected.run);
      expect(got.parts).toEqual(expected.parts);
      for (const [key, text] of Object.entries(expected.objects)) {
        if (!dropKeys(expected).includes(key)) expect([key, got.objects[key]]).toEqual([key, text]);
      }
      expect(dropKeys(got).length).toBeGreaterThan(dropKeys(expected).length);
      // One group (at most) a partition, one part a call, the parts released one a call.
      expect(calls).toBeGreaterThanOrEqual(PARTITIONS / (groupEntries === 1 ? 1 : 2) + 4);
    }
  });

  it('drops from parts whose lines files hold dataset lines only (written before they held the ids)', async () => {
    const deps = depsOf();
    await prepared(deps, 'legacy', REQUESTS, true);
    await settleAll(deps, 'legacy');
    const { objects } = await outcome(deps, 'legacy');
    const keys = runKeys('RUN'); // outcome() names every run's objects as run RUN's
    const requestsOf = (part: number) =>
      linesOf(objects[keys.requests(part)]).map((l) => JSON.parse(l).custom_id);
    // The ids come from the request lines, and the rewritten lines files keep the format they had.
    expect([requestsOf(0), linesOf(objects[keys.lines(0)])]).toEqual([
      ['r1', 'r2', 'r3'],
      ['1', '2', '4'],
    ]);
    expect([requestsOf(shardPart(2, 0)), linesOf(objects[keys.lines(shardPart(2, 0))])]).toEqual([
      ['r6', 'r7'],
      ['2', '4'],
    ]);
    expect(duplicateErrors(objects)).toHaveLength(6);
    expect(Object.keys(objects).filter((key) => key.endsWith('.entries'))).toEqual([]);
  });

  it('gives the same files and counts when run again from each stage it went through', async () => {
    const deps = depsOf({ budgetMs: 0 });
    await prepared(deps, 'again');
    const snapshots: Run[] = [];
    for (;;) {
      const before = await deps.runs.getRun('again');
      if (before) snapshots.push(before);
      if ((await settle(deps, { runId: 'again', groupEntries: 3 })).settled) break;
    }
    const expected = await outcome(deps, 'again');
    const stages = new Set(snapshots.map((s) => s.settle?.stage ?? 'start'));
    expect([...stages]).toEqual(['start', 'dedup', 'drop', 'release']);
    for (const snapshot of snapshots) {
      // A crash after every later write but the run record's: the run is as it was, its files and parts are not.
      const now = await deps.runs.getRun('again');
      await deps.runs.putRun({ ...snapshot, version: now?.version ?? 0 });
      await settleAll(deps, 'again', 3);
      expect(await outcome(deps, 'again')).toEqual(expected);
    }
  });

  it('gives the same files and counts after a crash at any of its writes', async () => {
    const reference = depsOf();
    await prepared(reference, 'crash-ref');
    const count = crashing(0);
    await settleAll(depsOf({ wrap: count.wrap }), 'crash-ref', 3);
    const writes = count.seen();
    const expected = await outcome(reference, 'crash-ref');
    expect(writes).toBeGreaterThan(20);
    // Every write while there are few, else 24 spread over them (the first and the last among them), four
    // runs at a time: each run is a run of its own.
    const points =
      writes <= 24
        ? Array.from({ length: writes }, (_, i) => i + 1)
        : Array.from({ length: 24 }, (_, i) => 1 + Math.round((i * (writes - 1)) / 23));
    for (let first = 0; first < points.length; first += 4) {
      await Promise.all(
        points.slice(first, first + 4).map(async (k) => {
          const runId = `crash-${k}`;
          await prepared(reference, runId);
          await expect(settleAll(depsOf({ wrap: crashing(k).wrap, budgetMs: 0 }), runId, 3)).rejects.toThrow(
            `crash at write ${k}`,
          );
          await settleAll(reference, runId, 3);
          const got = await outcome(reference, runId);
          expect({ k, ...got }).toEqual({ k, ...expected });
        }),
      );
    }
  }, 120_000);

  it('holds a bounded number of drops for one id used by 120,000 lines, writing them as sorted runs', async () => {
    const logged: Record<string, unknown>[] = [];
    const deps = depsOf({ log: (message, fields) => logged.push({ message, ...fields }) });
    // One id on every line: 40,000 lines a shard, in parts of 10,000 (shard 1 goes on in a.jsonl after shard
    // 0, so that its id file holds its lines in order, as a prepare step writes them).
    const lines = 40_000;
    const requests: Placed[] = [];
    for (const shard of [0, 1, 2]) {
      const from = shard === 1 ? lines : 0;
      for (let k = 0; k < lines; k++)
        requests.push(placed(shard, from + k + 1, 'same', Math.floor(k / 10_000)));
    }
    await prepared(deps, 'one-id', requests);
    const keys = runKeys('one-id');
    // A run an earlier attempt wrote beyond those this one writes: removed.
    await writeAll(
      deps.blobs,
      keys.drops(0, 99),
      '{"part":0,"line":1,"id":"same","shard":0,"bytes":1,"tokens":1}\n',
    );
    const dropRun = 7_000;
    expect(await settleAll(deps, 'one-id', undefined, dropRun)).toBe(1);

    const later = requests.length - 1;
    const dedup = logged.filter((l) => l.message === 'settle dedup');
    expect(dedup.reduce((n, l) => n + Number(l.duplicates), 0)).toBe(later);
    for (const l of dedup) {
      expect(Number(l.heldDrops)).toBeLessThanOrEqual(dropRun); // never more drops held than a run
      expect(Number(l.heldIds)).toBeLessThanOrEqual(1); // one id held, not its uses
      expect(l.heldUses).toBe(0);
    }

    const runs: string[] = [];
    for await (const object of deps.blobs.list(keys.dropFiles)) runs.push(object.key);
    expect(runs).toHaveLength(Math.ceil(later / dropRun));
    expect(runs).not.toContain(keys.drops(0, 99));
    const dropped = new Set<string>();
    for (const key of runs) {
      let text = '';
      for await (const chunk of deps.blobs.read(key)) text += Buffer.from(chunk).toString('utf8');
      const drops = linesOf(text).map((l) => JSON.parse(l) as { part: number; line: number; shard: number });
      expect(drops.length).toBeLessThanOrEqual(dropRun);
      const order = drops.map((d) => d.part * 1e6 + d.line);
      expect(order).toEqual([...order].sort((a, b) => a - b)); // each run sorted by part, then line
      for (const d of drops) dropped.add(`${d.shard}:${d.line}`);
    }
    expect(dropped.size).toBe(later);
    expect(dropped.has('0:1')).toBe(false); // the earliest use is kept

    const errors: { line: number }[] = [];
    for await (const object of deps.blobs.list(`${keys.prefix}errors/duplicates-`)) {
      let text = '';
      for await (const chunk of deps.blobs.read(object.key)) text += Buffer.from(chunk).toString('utf8');
      for (const line of linesOf(text)) errors.push(JSON.parse(line) as { line: number });
    }
    expect(errors).toHaveLength(later); // one error line a later use

    const parts = await deps.runs.listParts('one-id');
    expect(parts.reduce((n, p) => n + p.requests, 0)).toBe(1);
    expect(parts.filter((p) => p.requests > 0).map((p) => p.part)).toEqual([0]);
    const run = await deps.runs.getRun('one-id');
    expect(run?.settle?.duplicates).toBe(later);
    expect(run?.prepared).toBe(true);
  }, 120_000);

  it('stops on the cost limit before releasing a part', async () => {
    const deps = depsOf({ maxCostUsd: 0.000001 });
    await prepared(deps, 'costly');
    const failure = await settle(deps, { runId: 'costly' }).catch((caught: unknown) => caught);
    expect(failure).toBeInstanceOf(CostLimitError);
    expect((failure as Error).message).toMatch(
      /^The estimated cost of this run is \$\d\.\d+ \(70 input tokens and 200 output tokens a request at batch prices\), above the work's maxCostUsd of \$0\.000001000\. Nothing was sent to OpenAI\.$/,
    );
    const { run, parts } = await outcome(deps, 'costly');
    expect(run.estimatedCostUsd).toBe((failure as CostLimitError).estimatedUsd);
    expect(run.prepared).toBe(false);
    expect(run.status).toBe('preparing');
    expect(parts.every((p) => p.held)).toBe(true);
  });

  it('refuses a dataset with no records', async () => {
    const deps = depsOf();
    await prepared(deps, 'blank', []);
    await expect(settle(deps, { runId: 'blank' })).rejects.toThrow(
      new DatasetError('The dataset has no records: its 2 object(s) hold only blank lines.'),
    );
  });
});

describe('jsonlChunks', () => {
  it('joins lines into chunks of a few hundred lines and about a megabyte at most, each line whole and once', async () => {
    const lines = (count: number, chars: number) =>
      (async function* () {
        for (let i = 0; i < count; i++) yield `${i}:${'x'.repeat(chars)}`;
      })();
    const chunksOf = async (source: AsyncIterable<string>) => {
      const out: string[] = [];
      for await (const chunk of jsonlChunks(source)) out.push(Buffer.from(chunk).toString('utf8'));
      return out;
    };
    // Short lines: 256 a chunk.
    const short = await chunksOf(lines(600, 10));
    expect(short.map((c) => c.split('\n').length - 1)).toEqual([256, 256, 88]);
    // Lines of 300 KB, as image requests are: a chunk stops past CHUNK_CHARS, never 256 of them.
    const large = await chunksOf(lines(20, 300 * 1024));
    expect(Math.max(...large.map((c) => c.length))).toBeLessThan(CHUNK_CHARS + 300 * 1024 + 16);
    expect(
      large
        .join('')
        .split('\n')
        .filter(Boolean)
        .map((l) => Number(l.split(':')[0])),
    ).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });
});
