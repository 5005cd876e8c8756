import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { parsePartLine } from '../../functions/core/collect';
import { DatasetError } from '../../functions/core/errors';
import { type IdEntry, IdFileIndexSchema, parseEntryLine } from '../../functions/core/id-files';
import { isGzip } from '../../functions/core/lines';
import type { BlobStore } from '../../functions/core/ports';
import { type Part, runKeys } from '../../functions/core/run';
import { objectListCodec, planCodec, type Shard, shardOfPart, shardsOf } from '../../functions/core/shards';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import { INFLATE_BUDGETS, prepare } from '../../functions/steps/prepare';
import { settle } from '../../functions/steps/settle';
import {
  deleteIdFilesFrom,
  laneCheckpoint,
  readAll,
  ShardPlaces,
  StoredIdFiles,
  writeAll,
} from '../../functions/steps/storage';
import { localDeps, RecordingNotifier } from '../../local/runner';
import { localEnvironment } from '../support/local-environment';
import { runFixture } from '../support/runs';

/**
 * The Prepare lane step through the real stand-ins (s3rver, DynamoDB Local): lanes that prepare the
 * shards of a plan side by side, a few records a step, give every record one place under its exact line
 * number, read a gzip object once, and rewrite the same files when a step is run again.
 */

const shared = localEnvironment('openai-batch-prepare-', { kind: 'emulator', options: {} });

const RECORD_MS = 10; // each record's upload hook takes this long, on the manual clock

type Deps = StepDeps<Record<string, unknown>>;

/** Step dependencies on the shared stand-ins, with a manual clock the upload hook moves. */
function depsFor(budgetRecords: number, wrapBlobs?: (blobs: BlobStore) => BlobStore): Deps {
  const clock = { now: 1_000_000 };
  const work = defineWork({
    name: 'prep',
    model: 'gpt-4o-mini',
    maxRequestsPerBatch: 4,
    upload: (record) => {
      clock.now += RECORD_MS;
      const ask = { messages: [{ role: 'user', content: String(record.text ?? '') }] };
      if (record.twice) return [0, 1].map(() => ({ id: String(record.id), ...ask }));
      return { id: String(record.id), ...ask };
    },
  });
  const base = localDeps(
    shared.env,
    work,
    { now: () => clock.now, budgetMs: budgetRecords * RECORD_MS },
    new RecordingNotifier(),
  ) as Deps;
  return wrapBlobs ? { ...base, blobs: wrapBlobs(base.blobs) } : base;
}

interface Input {
  readonly key: string;
  readonly body: Buffer;
}

/** Writes the objects, the shard plan and the run record, as Register would; gives the shards. */
async function registered(
  deps: Deps,
  runId: string,
  objects: readonly Input[],
  shardBytes: number,
  lanes: number,
): Promise<Shard[]> {
  const planned = [];
  for (const object of objects) {
    await writeAll(deps.blobs, object.key, object.body);
    const info = await deps.blobs.head(object.key);
    if (!info) throw new Error(`no ${object.key}`);
    planned.push({ ...info, gzip: isGzip(object.body) });
  }
  const shards = [...shardsOf(planned, shardBytes)];
  const width = planCodec.width(shards);
  await writeAll(deps.blobs, runKeys(runId).plan, shards.map((s) => planCodec.encode(s, width)).join(''));
  const objectWidth = Math.max(...planned.map((o) => objectListCodec.widthOf(o)));
  const list = planned.map((o) => objectListCodec.encode(o, objectWidth)).join('');
  await writeAll(deps.blobs, runKeys(runId).objectList, list);
  const bytes = planned.reduce((n, o) => n + o.size, 0);
  const dataset = {
    key: `inputs/${runId}/`,
    objects: objects.length,
    bytes,
    shards: shards.length,
    planWidth: width,
    objectWidth,
    partitions: 3,
    lanes,
  };
  await deps.runs.createRun({ ...runFixture(runId), dataset }, false);
  return shards;
}

/** Runs every lane's steps side by side until all are done; gives the number of rounds. */
async function prepareLanes(
  deps: Deps,
  runId: string,
  lanes: number,
  groupEntries?: number,
): Promise<number> {
  const done = new Set<number>();
  let rounds = 0;
  while (done.size < lanes) {
    if (++rounds > 500) throw new Error('the lanes never finished');
    await Promise.all(
      Array.from({ length: lanes }, (_, lane) => lane)
        .filter((lane) => !done.has(lane))
        .map(async (lane) => {
          if ((await prepare(deps, { runId, lane, ...(groupEntries ? { groupEntries } : {}) })).done)
            done.add(lane);
        }),
    );
  }
  return rounds;
}

const text = async (deps: Deps, key: string) => Buffer.from(await readAll(deps.blobs, key)).toString('utf8');
const jsonLines = (body: string) => body.split('\n').filter((l) => l !== '');

/** Every object under a prefix, key to content. */
async function filesUnder(deps: Deps, prefix: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for await (const info of deps.blobs.list(prefix)) files.set(info.key, await text(deps, info.key));
  return files;
}

/** What prepare placed: requests by part, each with its dataset line; errors with their shard. */
async function placed(deps: Deps, runId: string) {
  const keys = runKeys(runId);
  const parts = await deps.runs.listParts(runId);
  const requests: { id: string; line: number; part: Part }[] = [];
  // A part an early settle emptied (its requests all later uses of ids) is done, and its files gone.
  for (const part of parts.filter((p) => p.requests > 0)) {
    const entries = jsonLines(await text(deps, keys.entries(part.part))).map(parsePartLine);
    expect(await deps.blobs.head(keys.lines(part.part))).toBeNull(); // read for numbers by older code
    const lines = entries.map((entry) => entry.line);
    const ids = jsonLines(await text(deps, keys.requests(part.part))).map((l) =>
      String(JSON.parse(l).custom_id),
    );
    expect(ids).toHaveLength(part.requests);
    // The lines file names each request's id beside its dataset line, aligned with the request file.
    expect(entries.map((entry) => entry.id)).toEqual(ids);
    ids.forEach((id, i) => {
      requests.push({ id, line: lines[i] ?? -1, part });
    });
  }
  const errors: { shard: number; line: number; code: string; object: string }[] = [];
  for (const [key, body] of await filesUnder(deps, `runs/${runId}/errors/prepare-`)) {
    const shard = Number(key.slice(`runs/${runId}/errors/prepare-`.length).split('-')[0]);
    for (const line of jsonLines(body)) {
      const error = JSON.parse(line) as { line: number; code: string; object: string };
      errors.push({ shard, line: error.line, code: error.code, object: error.object });
    }
  }
  const entries: IdEntry[] = [];
  for (const [key, body] of await filesUnder(deps, keys.idFiles)) {
    if (key.endsWith('.idx')) continue;
    const index = IdFileIndexSchema.parse(JSON.parse(await text(deps, `${key}.idx`)));
    const lines = jsonLines(body);
    expect(index.counts.reduce((a, b) => a + b, 0)).toBe(lines.length);
    entries.push(...lines.map(parseEntryLine));
  }
  return { parts, requests, errors, entries };
}

/** One object of these lines, registered in shards of 256 bytes for `lanes` lanes. */
async function registeredLines(deps: Deps, runId: string, lines: readonly string[], lanes: number) {
  const key = `inputs/${runId}/data.jsonl`;
  const shards = await registered(
    deps,
    runId,
    [{ key, body: Buffer.from(`${lines.join('\n')}\n`) }],
    256,
    lanes,
  );
  return { key, shards };
}

/** The duplicate_id errors Settle (or lane 0's early settle) wrote. */
async function duplicateErrors(deps: Deps, runId: string) {
  const files = await filesUnder(deps, `runs/${runId}/errors/duplicates`);
  return [...files.values()]
    .flatMap(jsonLines)
    .map((line) => JSON.parse(line) as { line: number; code: string; object: string });
}

/** Lines of JSONL for object `name`: record n carries the id `<name>-<n>`, with some bad and blank lines. */
function objectLines(name: string, count: number, special: Record<number, string> = {}): string[] {
  return Array.from({ length: count }, (_, i) => {
    const line = i + 1;
    const given = special[line];
    if (given !== undefined) return given;
    return JSON.stringify({ id: `${name}-${line}`, text: 'x'.repeat((line * 7) % 40) });
  });
}

/** The lanes' counts summed, as Settle sums them. */
async function laneCounts(deps: Deps, runId: string, lanes: number) {
  const counts = { records: 0, errors: 0, submittedRequests: 0, invalidRecords: 0, refusedRequests: 0 };
  let tokens = 0;
  for (let lane = 0; lane < lanes; lane++) {
    const cp = await laneCheckpoint(deps.blobs, runId, lane);
    expect(cp?.done).toBe(true);
    for (const name of Object.keys(counts) as (keyof typeof counts)[]) counts[name] += cp?.counts[name] ?? 0;
    tokens += cp?.estimatedTokens ?? 0;
  }
  return { counts, tokens };
}

describe('the Prepare lane step', () => {
  it('numbers lines exactly per object and places every record once when two lanes prepare byte-range shards a few records a step', async () => {
    const runId = 'lanes';
    const deps = depsFor(3);
    const a = objectLines('a', 80, {
      7: '{bad',
      12: '',
      13: '   ',
      30: JSON.stringify({ id: 'a-30', text: 'L'.repeat(700) }), // longer than a shard
      41: JSON.stringify({ id: 'a-41', twice: true }), // the same id twice from one line
      55: '[1]',
      79: '{bad',
    });
    const b = objectLines('b', 50, {
      1: '{bad',
      20: JSON.stringify({ id: 'same', text: 'first' }), // an id used again on another line: Settle's
      33: JSON.stringify({ id: 'same', text: 'again' }),
    });
    const objects = [
      { key: `inputs/${runId}/a.jsonl`, body: Buffer.from(`${a.join('\n')}\n`) },
      { key: `inputs/${runId}/b.jsonl`, body: Buffer.from(b.join('\r\n')) }, // CRLF, no final newline
      { key: `inputs/${runId}/c.jsonl`, body: Buffer.from('{"id":"c-1"}\n') },
    ];
    const shards = await registered(deps, runId, objects, 256, 2);
    expect(shards.length).toBeGreaterThan(10);

    const rounds = await prepareLanes(deps, runId, 2);
    expect(rounds).toBeGreaterThan(20);

    const objectOf = (shard: number) => shards[shard]?.key.slice(`inputs/${runId}/`.length, -'.jsonl'.length);
    const { parts, requests, errors, entries } = await placed(deps, runId);
    // Every record that makes a request is in one part, under its own line, in a part of its own object.
    const expected: string[] = [];
    for (const [name, lines] of [
      ['a', a],
      ['b', b],
      ['c', ['{"id":"c-1"}']],
    ] as const) {
      lines.forEach((line, i) => {
        if (line.trim() === '' || !line.startsWith('{"')) return;
        const id = String(JSON.parse(line).id);
        expected.push(`${name} ${i + 1} ${id}`);
      });
    }
    const got = requests.map((r) => `${objectOf(shardOfPart(r.part.part))} ${r.line} ${r.id}`);
    // (Lane 0 settled pack 0 on its own once prepared: the later use of "o03-1" in it is dropped already.)
    expect([...got].sort()).toEqual(expected.filter((r) => r !== 'o04 1 o03-1').sort());
    // Shard 0 was settled on its own once lane 0 had prepared it: its parts are released (and lane 0's
    // next step sent them), the rest held and pending.
    expect(parts.every((p) => p.generation === 0)).toBe(true);
    expect(parts.filter((p) => p.held).every((p) => p.status === 'pending')).toBe(true);
    expect(parts.filter((p) => !p.held).map((p) => shardOfPart(p.part))).toEqual(
      parts.filter((p) => shardOfPart(p.part) === 0).map(() => 0),
    );
    expect(parts.some((p) => !p.held)).toBe(true);
    // Bad lines and the id given twice on one line are errors under their own line, naming their object.
    expect(errors.every((e) => e.object === shards[e.shard]?.key)).toBe(true);
    expect(errors.map((e) => `${objectOf(e.shard)} ${e.line} ${e.code}`).sort()).toEqual(
      [
        'a 7 invalid_json',
        'a 41 duplicate_id',
        'a 55 not_an_object',
        'a 79 invalid_json',
        'b 1 invalid_json',
      ].sort(),
    );
    // One id entry for each request placed, naming its shard, line and part.
    expect(entries.map((e) => `${e.id} ${e.shard} ${e.line} ${e.part}`).sort()).toEqual(
      requests.map((r) => `${r.id} ${shardOfPart(r.part.part)} ${r.line} ${r.part.part}`).sort(),
    );
    const { counts, tokens } = await laneCounts(deps, runId, 2);
    expect(counts).toEqual({
      records: 80 - 2 + 50 + 1,
      errors: 5,
      submittedRequests: requests.length,
      invalidRecords: 4,
      refusedRequests: 1,
    });
    expect(tokens).toBe(parts.reduce((n, p) => n + p.estimatedTokens, 0));
    // Prepare leaves the run record to Settle.
    const run = await deps.runs.getRun(runId);
    expect(run).toMatchObject({ prepared: false, version: 0, counts: { records: 0 } });
  });

  it('packs small objects into shards: a few parts for many objects, every record placed once, errors and duplicates named by their own object and line, over steps that stop mid-object and between objects', async () => {
    const runId = 'packs';
    const deps = depsFor(3);
    const name = (i: number) => `o${String(i).padStart(2, '0')}`;
    const bodies = Array.from({ length: 14 }, (_, i) => {
      const lines = objectLines(name(i), 2 + (i % 5), {
        2: i % 4 === 1 ? '{bad' : JSON.stringify({ id: `${name(i)}-2`, text: 'y' }),
      });
      return `${lines.join('\n')}\n`;
    });
    // Edges: a line-1 id twice on one line, then the next object's line 1 (one line each: LineIds must
    // not take them for one line); the same id on line 1 of two objects of one pack (Settle drops the
    // later only); an object of blank lines only; CRLF without a final newline.
    bodies[3] = `${JSON.stringify({ id: 'o03-1', twice: true })}\n`;
    bodies[4] = `${JSON.stringify({ id: 'o03-1', text: 'z' })}\n`;
    bodies[7] = `${JSON.stringify({ id: 'shared', text: 'first' })}\n{"id":"o07-2"}\n`;
    bodies[8] = `${JSON.stringify({ id: 'shared', text: 'again' })}\n{"id":"o08-2"}\n`;
    bodies[10] = '\n  \n\n';
    bodies[11] = ['{"id":"o11-1"}', '{bad', '{"id":"o11-3"}'].join('\r\n');
    const objects = bodies.map((body, i) => ({
      key: `inputs/${runId}/${name(i)}.jsonl`,
      body: Buffer.from(body),
    }));
    const shards = await registered(deps, runId, objects, 512, 2);
    expect(shards.every((s) => s.start === 0 && s.end === s.size)).toBe(true);
    expect(shards.length).toBeGreaterThan(2); // two lanes each take more than one pack
    expect(shards.length).toBeLessThan(objects.length / 3);
    expect(shards.reduce((n, s) => n + s.objects, 0)).toBe(objects.length);

    await prepareLanes(deps, runId, 2);
    const run = await deps.runs.getRun(runId);
    if (!run) throw new Error('no run');
    const places = new ShardPlaces(deps.blobs, run);
    const where = async (shard: number, line: number) => {
      const place = await places.of(shard, line);
      return `${place.object?.slice(`inputs/${runId}/`.length, -'.jsonl'.length)} ${place.line}`;
    };
    const { requests, errors, entries } = await placed(deps, runId);
    // Every record that makes a request is in one part, under its own object and line.
    const expected: string[] = [];
    bodies.forEach((body, i) => {
      body.split(/\r?\n/).forEach((line, at) => {
        if (!line.startsWith('{"')) return;
        const id = String(JSON.parse(line).id);
        expected.push(`${name(i)} ${at + 1} ${id}`);
      });
    });
    const got = await Promise.all(
      requests.map(async (r) => `${await where(shardOfPart(r.part.part), r.line)} ${r.id}`),
    );
    // (Lane 0 settled pack 0 on its own once prepared: the later use of "o03-1" in it is dropped already.)
    expect([...got].sort()).toEqual(expected.filter((r) => r !== 'o04 1 o03-1').sort());
    // Bad lines and the id twice on one line: errors under their own line of their own object.
    const short = (key: string) => key.slice(`inputs/${runId}/`.length, -'.jsonl'.length);
    expect(errors.map((e) => `${short(e.object)} ${e.line} ${e.code}`).sort()).toEqual(
      [
        'o01 2 invalid_json',
        'o03 1 duplicate_id',
        'o05 2 invalid_json',
        'o09 2 invalid_json',
        'o11 2 invalid_json',
        'o13 2 invalid_json',
      ].sort(),
    );
    // Id entries number a pack's lines across it: one number a line of the pack, whatever its object.
    const numbered = new Map<string, string>();
    for (const e of entries) numbered.set(`${e.shard}:${e.line}`, e.id);
    expect(numbered.size).toBe(entries.length);
    // The two uses of "shared" are in one pack, on line 1 of their objects.
    const sharedUses = entries.filter((e) => e.id === 'shared');
    expect(new Set(sharedUses.map((e) => e.shard)).size).toBe(1);
    // Settle drops the later use of the id both objects give on their line 1, and names both objects.
    for (let calls = 0; !(await settle(deps, { runId })).settled; calls++)
      if (calls > 200) throw new Error('Settle never settled');
    const duplicates = await duplicateErrors(deps, runId);
    const messages = duplicates.map((e) => (e as unknown as { message: string }).message).sort();
    expect(messages).toEqual([
      `line 1 of inputs/${runId}/o04.jsonl: id "o03-1" was already used on line 1 of inputs/${runId}/o03.jsonl; ids must be unique within a run`,
      `line 1 of inputs/${runId}/o08.jsonl: id "shared" was already used on line 1 of inputs/${runId}/o07.jsonl; ids must be unique within a run`,
    ]);
    expect(duplicates.map((e) => `${e.code} ${short(e.object)} ${e.line}`).sort()).toEqual([
      'duplicate_id o04 1',
      'duplicate_id o08 1',
    ]);
    const kept: string[] = [];
    for (const part of (await deps.runs.listParts(runId)).filter((p) => p.requests > 0))
      for (const line of jsonLines(await text(deps, runKeys(runId).requests(part.part))))
        kept.push(String(JSON.parse(line).custom_id));
    expect(kept.filter((id) => id === 'shared' || id === 'o03-1')).toHaveLength(2);
    expect(kept).toHaveLength(requests.length - 1);
  });

  it("reads each shard's places once while they fit, the shard used last kept, as Settle looks them up over and over", async () => {
    const runId = 'places';
    const reads = new Map<string, number>();
    const deps = depsFor(100, (blobs) => readCalls(blobs, reads));
    // 140 objects of one line, in packs of two: 70 shards.
    const objects = Array.from({ length: 140 }, (_, i) => ({
      key: `inputs/${runId}/${String(i).padStart(3, '0')}.jsonl`,
      body: Buffer.from(`{"id":"p${String(i).padStart(3, '0')}"}\n`),
    }));
    const lineBytes = objects[0]?.body.length ?? 0;
    const shards = await registered(deps, runId, objects, 2 * lineBytes, 1);
    expect(shards.map((s) => s.objects)).toEqual(shards.map(() => 2));
    for (const s of shards)
      await writeAll(deps.blobs, runKeys(runId).packStarts(s.shard), JSON.stringify({ starts: [0, 1] }));
    const run = await deps.runs.getRun(runId);
    if (!run) throw new Error('no run');
    const name = (place: { object: string | null; line: number | null }) =>
      `${place.object?.slice(-'000.jsonl'.length)}:${place.line}`;
    const startsReads = () =>
      [...reads].filter(([key]) => key.includes('/state/packs/')).reduce((n, [, count]) => n + count, 0);

    // Every shard three times over, as Settle names the first uses of ids spread over the dataset.
    const places = new ShardPlaces(deps.blobs, run);
    reads.clear();
    for (let round = 0; round < 3; round++)
      for (const s of shards)
        expect(name(await places.of(s.shard, 2))).toBe(`${String(2 * s.shard + 1).padStart(3, '0')}.jsonl:1`);
    expect(reads.get(runKeys(runId).plan)).toBe(shards.length);
    expect(startsReads()).toBe(shards.length);

    // Room for a few shards only: the one used between each of the others stays, read once.
    const few = new ShardPlaces(deps.blobs, run, 4 * 1024);
    reads.clear();
    for (const s of shards.slice(1)) {
      expect(name(await few.of(0, 1))).toBe('000.jsonl:1');
      expect(name(await few.of(s.shard, 1))).toBe(`${String(2 * s.shard).padStart(3, '0')}.jsonl:1`);
    }
    expect(reads.get(runKeys(runId).plan)).toBe(shards.length);
    expect(startsReads()).toBe(shards.length);
    // And the others were dropped: the second shard is read again.
    await few.of(1, 1);
    expect(reads.get(runKeys(runId).plan)).toBe(shards.length + 1);
  });

  it('reads small gzip objects in a pack, inflating one again from its start where a step stopped inside it', async () => {
    const runId = 'packs-gzip';
    const read = new Map<string, number>();
    const deps = depsFor(3, (blobs) => counting(blobs, read));
    const z = objectLines('z', 8, { 4: '{bad', 6: '' });
    const y = objectLines('y', 3);
    const objects = [
      { key: `inputs/${runId}/a.jsonl`, body: Buffer.from(`${objectLines('a', 2).join('\n')}\n`) },
      { key: `inputs/${runId}/b.jsonl.gz`, body: gzipSync(`${z.join('\n')}\n`) },
      { key: `inputs/${runId}/c.jsonl`, body: Buffer.from(objectLines('c', 1).join('\n')) },
      { key: `inputs/${runId}/d.jsonl.gz`, body: gzipSync(y.join('\r\n')) },
    ];
    const shards = await registered(deps, runId, objects, 8192, 1);
    expect(shards.map((s) => [s.objects, s.gzip])).toEqual([[4, false]]);
    await prepareLanes(deps, runId, 1);
    const run = await deps.runs.getRun(runId);
    if (!run) throw new Error('no run');
    const places = new ShardPlaces(deps.blobs, run);
    const { requests, errors } = await placed(deps, runId);
    const got = await Promise.all(
      requests.map(async (r) => {
        const place = await places.of(shardOfPart(r.part.part), r.line);
        return `${place.object?.slice(`inputs/${runId}/`.length)} ${place.line} ${r.id}`;
      }),
    );
    expect(got.sort()).toEqual(
      [
        'a.jsonl 1 a-1',
        'a.jsonl 2 a-2',
        ...[1, 2, 3, 5, 7, 8].map((line) => `b.jsonl.gz ${line} z-${line}`),
        'c.jsonl 1 c-1',
        ...[1, 2, 3].map((line) => `d.jsonl.gz ${line} y-${line}`),
      ].sort(),
    );
    expect(errors.map((e) => `${e.object.slice(`inputs/${runId}/`.length)} ${e.line} ${e.code}`)).toEqual([
      'b.jsonl.gz 4 invalid_json',
    ]);
    // Steps of 3 records stopped inside b: it was read again from its start, a few times at most.
    const gzipped = objects[1]?.body.length ?? 0;
    expect(read.get(objects[1]?.key ?? '')).toBeGreaterThan(gzipped);
    expect(read.get(objects[1]?.key ?? '')).toBeLessThanOrEqual(4 * gzipped);
    expect(read.get(objects[0]?.key ?? '')).toBe(objects[0]?.body.length);
  });

  it('fails the run naming the object when a gzip object is corrupt, in a pack or a shard of its own', async () => {
    for (const [runId, shardBytes] of [
      ['corrupt-packed', 8192],
      ['corrupt-alone', 1024],
    ] as const) {
      const deps = depsFor(5);
      const whole = gzipSync(`${objectLines('g', 200).join('\n')}\n`);
      const objects = [
        { key: `inputs/${runId}/a.jsonl`, body: Buffer.from(`${objectLines('a', 2).join('\n')}\n`) },
        // Cut short: gzip's end is missing.
        { key: `inputs/${runId}/b.jsonl.gz`, body: whole.subarray(0, whole.length - 40) },
      ];
      const shards = await registered(deps, runId, objects, shardBytes, 1);
      expect(shards.map((s) => s.objects)).toEqual(runId === 'corrupt-packed' ? [2] : [1, 1]);
      await expect(prepareLanes(deps, runId, 1)).rejects.toThrow(
        `The dataset object inputs/${runId}/b.jsonl.gz is not valid gzip: `,
      );
    }
  });

  it("reads a pack's objects a few GETs ahead, and closes those it did not reach when a step stops", async () => {
    const runId = 'packs-ahead';
    const open = { now: 0, most: 0 };
    const deps = depsFor(7, (blobs) => openReads(blobs, `inputs/${runId}/`, open));
    const objects = Array.from({ length: 30 }, (_, i) => ({
      key: `inputs/${runId}/${String(i).padStart(2, '0')}.jsonl`,
      body: Buffer.from(`${objectLines(`q${i}`, 2).join('\n')}\n`),
    }));
    const shards = await registered(deps, runId, objects, 64 * 1024, 1);
    expect(shards).toHaveLength(1);
    let steps = 0;
    for (; !(await prepare(deps, { runId, lane: 0 })).done; steps++) {
      expect(open.now).toBe(0); // every GET the step sent is closed when it ends
      if (steps > 50) throw new Error('the lane never finished');
    }
    expect(open.now).toBe(0);
    expect(steps).toBeGreaterThan(5);
    expect(open.most).toBeGreaterThan(2);
    // Every record placed once; each part takes requests of several objects (a step of 7 records
    // reads three or four objects of 2 records into parts of at most 4).
    const { requests } = await placed(deps, runId);
    expect(requests.map((r) => r.id).sort()).toEqual(
      objects.flatMap((_, i) => [`q${i}-1`, `q${i}-2`]).sort(),
    );
    const objectsOfPart = new Map<number, Set<string>>();
    for (const r of requests) {
      const here = objectsOfPart.get(r.part.part) ?? new Set<string>();
      here.add(r.id.split('-')[0] ?? '');
      objectsOfPart.set(r.part.part, here);
    }
    expect(Math.min(...[...objectsOfPart.values()].map((o) => o.size))).toBeGreaterThan(1);
  });

  it('fails the run, naming the object and a size to split it into, when a gzip object takes longer than INFLATE_BUDGETS budgets to inflate, and leaves no copy', async () => {
    const runId = 'slow-gzip';
    const key = `inputs/${runId}/big.jsonl.gz`;
    const clock = { now: 0 };
    const base = depsFor(4);
    // Each chunk of the object read takes half a budget: the deadline falls midway through the object.
    const slow = new Proxy(base.blobs, {
      get: (store, property, receiver) => {
        if (property !== 'read') return Reflect.get(store, property, receiver);
        return async function* (k: string, start?: number, etag?: string, end?: number) {
          for await (const chunk of store.read(k, start, etag, end)) {
            if (k === key) clock.now += base.budgetMs / 2;
            yield chunk;
          }
        };
      },
    });
    // The limit the Prepare function has on AWS (a local run has none).
    const deps: Deps = {
      ...base,
      blobs: slow,
      now: () => clock.now,
      inflateMs: INFLATE_BUDGETS * base.budgetMs,
    };
    // Hex text gzips to about half its size: some 700 KB, read in several chunks.
    const lines = Array.from({ length: 20_000 }, (_, i) =>
      JSON.stringify({ id: `z${i}`, text: createHash('sha256').update(String(i)).digest('hex') }),
    );
    const body = gzipSync(Buffer.from(`${lines.join('\n')}\n`));
    const shards = await registered(deps, runId, [{ key, body }], 512, 1);
    expect(shards).toMatchObject([{ gzip: true, objects: 1 }]);
    const refused = await prepare(deps, { runId, lane: 0 }).catch((caught: unknown) => caught);
    expect(refused).toBeInstanceOf(DatasetError);
    const message = (refused as Error).message;
    expect(message).toContain(`s3://${deps.bucket}/${key} is a gzip object of`);
    expect(message).toContain(
      `in ${Math.round((INFLATE_BUDGETS * deps.budgetMs) / 60_000)} minutes it inflated`,
    );
    // What it read by the deadline, and half of it as the size to split into: less than the object.
    const bytesOf = (size: string, unit: string) =>
      Number(size) * 1024 ** (unit === 'KiB' ? 1 : unit === 'MiB' ? 2 : 3);
    const [, readSize = '', readUnit = '', halfSize = '', halfUnit = ''] =
      message.match(/inflated ([\d.]+) (KiB|MiB|GiB) of it .* at most about ([\d.]+) (KiB|MiB|GiB)/) ?? [];
    const readBytes = bytesOf(readSize, readUnit);
    expect(readBytes).toBeGreaterThan(0);
    expect(readBytes).toBeLessThan(body.length);
    expect(Math.abs(bytesOf(halfSize, halfUnit) - readBytes / 2)).toBeLessThan(1024);
    expect(await deps.blobs.head(runKeys(runId).inflated(0))).toBeNull();
  });

  it('inflates a gzip object at the start of a call, not after a shard the call prepared, so that it has the whole call', async () => {
    const runId = 'gzip-fresh';
    const reads = new Map<string, number>();
    const deps = depsFor(1000, (blobs) => readCalls(blobs, reads));
    const plain = (name: string) => ({
      key: `inputs/${runId}/${name}.jsonl`,
      body: Buffer.from(`${objectLines(name, 3).join('\n')}\n`),
    });
    const gzip = {
      key: `inputs/${runId}/c.jsonl.gz`,
      body: gzipSync(Buffer.from(`${objectLines('c', 3).join('\n')}\n`)),
    };
    const shards = await registered(deps, runId, [plain('a'), plain('b'), gzip], 200, 1);
    expect(shards.map((s) => s.gzip)).toEqual([false, false, true]);
    // Call after call (the lane's budget is never spent): none both prepares b and inflates c.
    const calls: string[][] = [];
    for (let done = false; !done; ) {
      if (calls.length > 20) throw new Error('the lane never finished');
      reads.clear();
      done = (await prepare(deps, { runId, lane: 0 })).done;
      calls.push(['b.jsonl', 'c.jsonl.gz'].filter((name) => reads.has(`inputs/${runId}/${name}`)));
    }
    expect(calls).toContainEqual(['b.jsonl']);
    expect(calls).toContainEqual(['c.jsonl.gz']);
    expect(calls).not.toContainEqual(['b.jsonl', 'c.jsonl.gz']);
    const { requests } = await placed(deps, runId);
    expect(requests.map((r) => r.id).sort()).toEqual(
      ['a', 'b', 'c'].flatMap((n) => [1, 2, 3].map((k) => `${n}-${k}`)),
    );
  });

  it('reads a gzip object once, over several steps, through its inflated copy', async () => {
    const runId = 'gzip';
    const key = `inputs/${runId}/data.jsonl.gz`;
    const read = new Map<string, number>();
    const deps = depsFor(4, (blobs) => counting(blobs, read));
    const lines = objectLines('g', 40, { 9: '{bad', 10: '' });
    const body = gzipSync(Buffer.from(`${lines.join('\n')}\n`));
    const shards = await registered(deps, runId, [{ key, body }], 64, 1);
    expect(shards).toHaveLength(1);

    const rounds = await prepareLanes(deps, runId, 1);
    expect(rounds).toBeGreaterThan(5);
    expect(read.get(key)).toBe(body.length);
    const { requests, errors } = await placed(deps, runId);
    expect(requests.map((r) => `${r.line} ${r.id}`).sort()).toEqual(
      lines.flatMap((l, i) => (l.startsWith('{"') ? [`${i + 1} g-${i + 1}`] : [])).sort(),
    );
    expect(errors.map((e) => e.line)).toEqual([9]);
    // The inflated copy is removed once the shard is done.
    expect(await deps.blobs.head(runKeys(runId).inflated(0))).toBeNull();
  });

  it('settles shard 0 in a step of its own, on a fresh budget, after the step that prepared it', async () => {
    const runId = 'first-own-step';
    const deps = depsFor(1000); // a budget no step here uses up
    const lines = objectLines('o', 40, { 5: JSON.stringify({ id: 'o-1', text: 'again' }) });
    const { shards } = await registeredLines(deps, runId, lines, 1);
    expect(shards.length).toBeGreaterThan(2);
    const stepOf = async () => {
      await prepare(deps, { runId, lane: 0 });
      const cp = await laneCheckpoint(deps.blobs, runId, 0);
      return { shard: cp?.shard, records: cp?.counts.records, settled: cp?.firstShardSettled };
    };
    const first = await stepOf(); // shard 0, and only it: the step ends with it
    expect(first).toMatchObject({ shard: 1, settled: false });
    // The next step settles it and prepares nothing: the whole budget was the settle's.
    expect(await stepOf()).toEqual({ ...first, settled: true });
    expect((await duplicateErrors(deps, runId)).map((e) => e.line)).toEqual([5]);
  });

  it('leaves a shard 0 with more ids than a Settle group to Settle, which still drops its duplicates and releases its parts', async () => {
    const runId = 'first-left';
    const deps = depsFor(4);
    const lines = objectLines('f', 40, { 6: JSON.stringify({ id: 'f-2', text: 'again' }) });
    const { key, shards } = await registeredLines(deps, runId, lines, 2);
    expect(shards.length).toBeGreaterThan(2);
    // What an early settle of an earlier release left before it died: gone once shard 0 is left to Settle.
    const left = [runKeys(runId).firstShardDuplicateErrors, runKeys(runId).firstShardDrops(0)];
    for (const stale of left) await writeAll(deps.blobs, stale, '{"stale":true}\n');
    await prepareLanes(deps, runId, 2, 3); // shard 0 holds more than 3 ids
    for (const stale of left) expect(await deps.blobs.head(stale)).toBeNull();
    const lane0 = await laneCheckpoint(deps.blobs, runId, 0);
    expect(lane0).toMatchObject({ firstShardLeft: true, firstShardSettled: false, firstPartsSent: false });
    const before = await deps.runs.listParts(runId);
    expect(before.every((p) => p.held && p.status === 'pending')).toBe(true);
    for (let calls = 0; !(await settle(deps, { runId, groupEntries: 3 })).settled; calls++)
      if (calls > 200) throw new Error('Settle never settled');
    const parts = await deps.runs.listParts(runId);
    expect(parts.every((p) => !p.held)).toBe(true);
    const requests: string[] = [];
    for (const part of parts.filter((p) => p.requests > 0)) // a part dedup emptied is done, its files gone
      for (const line of jsonLines(await text(deps, runKeys(runId).requests(part.part))))
        requests.push(String(JSON.parse(line).custom_id));
    expect(requests.sort()).toEqual(lines.flatMap((_, i) => (i + 1 === 6 ? [] : [`f-${i + 1}`])).sort());
    expect((await duplicateErrors(deps, runId)).map((e) => [e.line, e.code, e.object])).toEqual([
      [6, 'duplicate_id', key],
    ]);
  });

  it('reads a gzip object whose content is gzip again the same way over any number of steps: every line accounted for', async () => {
    // Inflated once, the copy is gzip bytes: lines of binary, each an error. A step resumes by offset in
    // the copy, so resuming must not inflate it again (it once did, losing the lines past the offset).
    const lines = objectLines('d', 200);
    const body = gzipSync(gzipSync(Buffer.from(`${lines.join('\n')}\n`)));
    const outcomes: string[][] = [];
    for (const budget of [1, 1000]) {
      const runId = `double-gzip-${budget}`;
      const deps = depsFor(budget);
      await registered(deps, runId, [{ key: `inputs/${runId}/data.jsonl.gz`, body }], 4096, 1);
      await prepareLanes(deps, runId, 1);
      const { requests, errors } = await placed(deps, runId);
      expect(requests).toEqual([]);
      const { counts } = await laneCounts(deps, runId, 1);
      expect(counts.errors).toBe(errors.length);
      expect(counts.records).toBe(errors.length);
      outcomes.push(errors.map((e) => `${e.line} ${e.code}`).sort());
    }
    expect(outcomes[0]?.length).toBeGreaterThan(1);
    expect(outcomes[0]).toEqual(outcomes[1]);
  });

  it("takes a line that starts with gzip's magic number as the bad line it is where a shard or a resumed step starts at it, not as a gzip stream", async () => {
    // Line 2 is the bytes 1f 8b 41 42: read whole, one invalid_utf8 error. A shard (the object's second,
    // after a first line longer than a shard) and a resumed step (a step a record) both start on it.
    const junk = Buffer.from([0x1f, 0x8b, 0x41, 0x42]);
    const bodyOf = (first: string) =>
      Buffer.concat([Buffer.from(`${first}\n`), junk, Buffer.from('\n{"id":"m-3"}\n{"id":"m-4"}\n')]);
    for (const [runId, first, shardBytes, budget] of [
      ['magic-shard', JSON.stringify({ id: 'm-1', text: 'x'.repeat(400) }), 256, 10],
      ['magic-resume', '{"id":"m-1"}', 4096, 1],
    ] as const) {
      const deps = depsFor(budget);
      const key = `inputs/${runId}/data.jsonl`;
      const shards = await registered(deps, runId, [{ key, body: bodyOf(first) }], shardBytes, 1);
      expect(shards.map((s) => s.gzip)).not.toContain(true);
      const rounds = await prepareLanes(deps, runId, 1);
      expect(rounds).toBeGreaterThan(1);
      const { requests, errors } = await placed(deps, runId);
      expect(requests.map((r) => `${r.line} ${r.id}`).sort()).toEqual(['1 m-1', '3 m-3', '4 m-4']);
      expect(errors.map((e) => `${e.line} ${e.code}`)).toEqual(['2 invalid_utf8']);
    }
  });

  it('fails the run, naming the object, when a dataset object is rewritten after Register listed it, rather than lose or mix lines', async () => {
    for (const [runId, change] of [
      ['rewritten-longer', (body: string) => `${body}{"id":"late"}\n`],
      ['rewritten-shorter', (body: string) => body.slice(0, 40)],
      ['rewritten-gzip', (body: string) => body],
    ] as const) {
      const deps = depsFor(5);
      const key = `inputs/${runId}/data.jsonl`;
      const body = `${objectLines('w', 30).join('\n')}\n`;
      const first = runId === 'rewritten-gzip' ? gzipSync(body) : Buffer.from(body);
      const shards = await registered(deps, runId, [{ key, body: first }], 256, 2);
      // The gzip one is rewritten with the same lines, compressed otherwise: another version all the same.
      const now = runId === 'rewritten-gzip' ? gzipSync(body, { level: 1 }) : Buffer.from(change(body));
      expect(now.equals(first)).toBe(false);
      await writeAll(deps.blobs, key, now);
      await expect(prepareLanes(deps, runId, 2)).rejects.toThrow(
        new RegExp(
          `^${key.replaceAll('.', '\\.')} changed after this run listed it \\(it had ETag ${shards[0]?.etag}`,
        ),
      );
    }
  });

  it('rewrites the same files when a step is run again from the same checkpoint, and leaves no stale id entries after a longer attempt', async () => {
    const runId = 'retried';
    const lines = objectLines('r', 60, { 5: '{bad', 33: '{bad' });
    const objects = [
      { key: `inputs/${runId}/a.jsonl`, body: Buffer.from(`${lines.join('\n')}\n`) },
      { key: `inputs/${runId}/b.jsonl`, body: Buffer.from(`${objectLines('s', 30).join('\n')}\n`) },
    ];
    const short = depsFor(4);
    await registered(short, runId, objects, 300, 1);
    const keys = runKeys(runId);
    const snapshot = () => filesUnder(short, keys.prefix);

    // Two steps in, the same step twice from the same checkpoint gives the same files.
    await prepare(short, { runId, lane: 0 });
    await prepare(short, { runId, lane: 0 });
    const checkpoint = await text(short, keys.lane(0));
    await prepare(short, { runId, lane: 0 });
    const once = await snapshot();
    await writeAll(short.blobs, keys.lane(0), checkpoint);
    await prepare(short, { runId, lane: 0 });
    expect(await snapshot()).toEqual(once);

    // An attempt that read much further (into other shards) and died before its checkpoint...
    await writeAll(short.blobs, keys.lane(0), checkpoint);
    const crashing = depsFor(40, (blobs) => dyingOnCheckpoint(blobs, keys.lane(0)));
    await expect(prepare(crashing, { runId, lane: 0 })).rejects.toThrow('Lambda timed out');
    // ...run again a few records a step, to the end.
    await prepareLanes(short, runId, 1);

    const { requests, errors, entries } = await placed(short, runId);
    const expected = [
      ...lines.flatMap((l, i) => (l.startsWith('{"') ? [`r-${i + 1} ${i + 1}`] : [])),
      ...Array.from({ length: 30 }, (_, i) => `s-${i + 1} ${i + 1}`),
    ];
    expect(requests.map((r) => `${r.id} ${r.line}`).sort()).toEqual(expected.sort());
    expect(errors.map((e) => e.line).sort()).toEqual([33, 5]);
    expect(entries.map((e) => `${e.id} ${e.line} ${e.part}`).sort()).toEqual(
      requests.map((r) => `${r.id} ${r.line} ${r.part.part}`).sort(),
    );
    const { counts } = await laneCounts(short, runId, 1);
    expect(counts).toMatchObject({ records: 90, errors: 2, submittedRequests: 88 });
  });

  it('writes id files of a bounded size with their index, and removes those of a step run again', async () => {
    const runId = 'idfiles';
    const deps = depsFor(1);
    const keys = runKeys(runId);
    const entry = (n: number, shard: number, line: number): IdEntry => ({
      id: `id-${n}`,
      shard,
      line,
      part: shard * 100_000,
      bytes: 10,
      tokens: 1,
    });
    for (const [shard, line] of [
      [1, 1],
      [1, 40],
      [10, 1],
      [11, 40],
    ] as const) {
      const files = new StoredIdFiles(deps.blobs, runId, shard, line, 4, 4);
      for (let n = 0; n < 10; n++) await files.add(entry(n, shard, line + n));
      await files.close();
      expect(files.files).toBe(3);
    }
    const index = IdFileIndexSchema.parse(JSON.parse(await text(deps, `${keys.idFile(1, 40, 2)}.idx`)));
    expect(index.counts.reduce((a, b) => a + b, 0)).toBe(2);
    expect(index.offsets).toHaveLength(5);
    // A step of shard 1 run again from line 40 removes its own files only.
    expect(await deleteIdFilesFrom(deps.blobs, runId, 1, 40)).toBe(6);
    const left = [...(await filesUnder(deps, keys.idFiles)).keys()].map((k) => k.slice(keys.idFiles.length));
    expect(left.filter((k) => k.endsWith('.ids'))).toEqual([
      '000001-0000000001-0000.ids',
      '000001-0000000001-0001.ids',
      '000001-0000000001-0002.ids',
      '000010-0000000001-0000.ids',
      '000010-0000000001-0001.ids',
      '000010-0000000001-0002.ids',
      '000011-0000000040-0000.ids',
      '000011-0000000040-0001.ids',
      '000011-0000000040-0002.ids',
    ]);
  });

  it('is done at once for a lane past the shards, and for a lane already done', async () => {
    const runId = 'few';
    const deps = depsFor(100);
    await registered(
      deps,
      runId,
      [{ key: `inputs/${runId}/a.jsonl`, body: Buffer.from('{"id":"x"}\n') }],
      1024,
      1,
    );
    expect(await prepare(deps, { runId, lane: 3 })).toEqual({ done: true });
    expect(await laneCheckpoint(deps.blobs, runId, 3)).toBeNull();
    expect(await prepare(deps, { runId, lane: 0 })).toEqual({ done: true });
    expect(await prepare(deps, { runId, lane: 0 })).toEqual({ done: true });
    expect((await laneCheckpoint(deps.blobs, runId, 0))?.counts.records).toBe(1);
  });
});

/** A store that counts the reads of each key. */
function readCalls(blobs: BlobStore, reads: Map<string, number>): BlobStore {
  return new Proxy(blobs, {
    get: (store, property, receiver) => {
      if (property !== 'read') return Reflect.get(store, property, receiver);
      return (key: string, ...rest: [number?, string?, number?]) => {
        reads.set(key, (reads.get(key) ?? 0) + 1);
        return store.read(key, ...rest);
      };
    },
  });
}

/** A store that counts the bytes read of each key. */
function counting(blobs: BlobStore, read: Map<string, number>): BlobStore {
  return new Proxy(blobs, {
    get: (store, property, receiver) => {
      if (property !== 'read') return Reflect.get(store, property, receiver);
      return async function* (key: string, start?: number, etag?: string, end?: number) {
        for await (const chunk of store.read(key, start, etag, end)) {
          read.set(key, (read.get(key) ?? 0) + chunk.length);
          yield chunk;
        }
      };
    },
  });
}

/** A store that counts the reads of keys under `prefix` open at once (started, not yet closed). */
function openReads(blobs: BlobStore, prefix: string, open: { now: number; most: number }): BlobStore {
  return new Proxy(blobs, {
    get: (store, property, receiver) => {
      if (property !== 'read') return Reflect.get(store, property, receiver);
      return async function* (key: string, start?: number, etag?: string, end?: number) {
        const counted = key.startsWith(prefix);
        if (counted) open.most = Math.max(open.most, ++open.now);
        try {
          yield* store.read(key, start, etag, end);
        } finally {
          if (counted) open.now -= 1;
        }
      };
    },
  });
}

/** A store whose write of `key` dies: the step's files are written, its checkpoint is not. */
function dyingOnCheckpoint(blobs: BlobStore, key: string): BlobStore {
  return new Proxy(blobs, {
    get: (store, property, receiver) => {
      if (property !== 'write') return Reflect.get(store, property, receiver);
      return async (written: string, body: AsyncIterable<Uint8Array>) => {
        if (written === key) throw new Error('Lambda timed out');
        return store.write(written, body);
      };
    },
  });
}
