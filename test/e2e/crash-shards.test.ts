import { gzipSync } from 'node:zlib';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import { shardsOf } from '../../functions/core/shards';
import { startEmulator } from '../../local/emulator/server';
import { type LocalEnvironment, runLocally } from '../../local/runner';
import { CrashPlan } from '../support/crash';
import { type FixtureWork, fixtureWork } from '../support/e2e';
import { localEnvironment } from '../support/local-environment';
import { ManualTime } from '../support/manual-time';
import { errorPlaces, outputIds, partsPaidTwice } from '../support/run-checks';

/**
 * The crash walk over the shard steps: a dataset cut into many small shards (the `sharded` fixture work:
 * shards of 1 KiB, three lanes), one object in byte ranges and small objects in packs (one of them gzip), with bad lines in
 * several shards and custom_ids used again across shards and within a pack, whose Register, Prepare (a
 * lane) or Settle handler dies right after one of its side effects,
 * once; the state machine's retry carries on, on a clock that uses its budget up after a few readings,
 * so that it stops elsewhere than the crashed attempt. Each run must complete with every good record in
 * outputs once, every bad line and every later use of an id in errors once, and no part paid twice.
 *
 * The lanes run side by side, so the order of their effects is not the same from run to run: crash point
 * n is the n-th effect of whichever lane got there. Points are sampled evenly over the shard steps' effects
 * of a clean run ({@link POINTS} of them), and the states they fell in are checked to cover every step.
 */

const POINTS = 12;
const PARALLEL = 4;
const LINES = 64;
/** Bad lines (1-based) in three shards, and lines whose id repeats an earlier line's. */
const BAD = [4, 30, 55];
const REPEATS: Record<number, number> = { 40: 2, 60: 2, 45: 44 };
const RETRY_CLOCK = { stepMs: 5_000, maxAheadMs: 40_000 };
const EMULATOR = { validationMs: 20, requestsPerSecond: 20_000, finalizingMs: 10 };
const SHARD_STATES = ['Register', 'Prepare', 'Settle'];

const shared = localEnvironment('openai-batch-crash-shards-', {
  kind: 'url',
  baseURL: 'http://127.0.0.1:9/v1',
  apiKey: 'unused',
});
let work: FixtureWork;

/** Small objects after the large one, packed (2 to 4 lines each), and their bad lines and repeated ids. */
const SMALL = 9;
/** A small object that is gzip (one record: ten times its size fits in a pack of 1 KiB with the next). */
const SMALL_GZIP = 's2';
const smallLines = (i: number) => (`s${i}` === SMALL_GZIP ? 1 : 2 + (i % 3));
const SMALL_BAD = ['s1:2', 's6:1'];
/** Lines of small objects whose id is that of another line: of a small object, or of the large one. */
const SMALL_REPEATS: Record<string, string> = { 's5:1': 's4-1', 's8:2': '10', 's3:1': 's2-1' };

const question = (id: string) =>
  JSON.stringify({ id, content: `question ${id} in a dataset cut into shards` });

/** The dataset's objects, by name: `a`, cut into byte ranges, then the small ones. */
function datasetOf(runId: string): Record<string, string | Buffer> {
  const lines: string[] = [];
  for (let line = 1; line <= LINES; line++) {
    if (BAD.includes(line)) lines.push(`{"id":"${runId}-bad-${line}"`);
    else lines.push(question(`${runId}-${REPEATS[line] ?? line}`));
  }
  const objects: Record<string, string | Buffer> = { a: `${lines.join('\n')}\n` };
  for (let i = 0; i < SMALL; i++) {
    const body = Array.from({ length: smallLines(i) }, (_, at) => {
      const place = `s${i}:${at + 1}`;
      if (SMALL_BAD.includes(place)) return `{"id":"${runId}-bad-${place}"`;
      const id = `${runId}-${SMALL_REPEATS[place] ?? `s${i}-${at + 1}`}`;
      // The gzip object's record is short: it counts as ten times its size in a pack.
      return `s${i}` === SMALL_GZIP ? JSON.stringify({ id, content: 'q' }) : question(id);
    });
    const text = `${body.join('\n')}\n`;
    objects[`s${i}`] = `s${i}` === SMALL_GZIP ? gzipSync(text) : text;
  }
  return objects;
}

/** What a run must end with: each good id in outputs once, and errors at these places once. */
const GOOD_IDS = [
  ...Array.from({ length: LINES }, (_, i) => i + 1)
    .filter((line) => !BAD.includes(line) && REPEATS[line] === undefined)
    .map(String),
  ...Array.from({ length: SMALL }, (_, i) =>
    Array.from({ length: smallLines(i) }, (_, at) => `s${i}:${at + 1}`).filter(
      (place) => !SMALL_BAD.includes(place) && SMALL_REPEATS[place] === undefined,
    ),
  )
    .flat()
    .map((place) => place.replace(':', '-')),
];
const errorPlacesOf = (runId: string) =>
  [
    ...[...BAD, ...Object.keys(REPEATS).map(Number)].map((line) => `a:${line}`),
    ...SMALL_BAD,
    ...Object.keys(SMALL_REPEATS),
  ]
    .map((place) => `inputs/${runId}/${place.replace(':', '.jsonl:')}`)
    .sort();

async function crashRun(n: number | null): Promise<{ plan: CrashPlan; ok: boolean; problem: string }> {
  const env = shared.env;
  const runId = `shards-${n ?? 'none'}`;
  const key = `inputs/${runId}/`;
  for (const [name, body] of Object.entries(datasetOf(runId)))
    await env.s3.client.send(
      new PutObjectCommand({ Bucket: env.s3.bucket, Key: `${key}${name}.jsonl`, Body: body }),
    );
  const plan = new CrashPlan(n, RETRY_CLOCK);
  const time = new ManualTime({ maxTicks: 300 });
  const emulator = await startEmulator(time.emulatorOptions({ ...EMULATOR, seed: 11 }));
  const target: LocalEnvironment = {
    ...env,
    emulator,
    openai: { baseURL: emulator.url, apiKey: 'sk-local' },
  };
  let problem = '';
  try {
    const options = plan.runOptions(time, target, {
      budgetMs: 20_000,
      lostCreateGraceMs: 10_000,
    });
    const result = await runLocally(target, work.loaded, key, runId, options, {
      definition: work.definition,
    });
    if ((result.output.summary as { balanced?: boolean } | undefined)?.balanced !== true)
      problem = 'not balanced';
  } catch (caught) {
    problem = `failed: ${String(caught)}`;
  } finally {
    if ((await partsPaidTwice(new OpenAI({ apiKey: 'sk-local', baseURL: emulator.url }), runId)) > 0)
      problem += ' part paid twice';
    await emulator.stop();
  }
  const outputs = await outputIds(env, runId);
  const expected = GOOD_IDS.map((id) => `${runId}-${id}`).sort();
  if (JSON.stringify(outputs) !== JSON.stringify(expected))
    problem += ` outputs ${outputs.length}/${expected.length}`;
  const errors = await errorPlaces(env, runId);
  if (JSON.stringify(errors) !== JSON.stringify(errorPlacesOf(runId)))
    problem += ` errors at ${errors.join(',')}`;
  return { plan, ok: problem === '', problem };
}

describe('crash walk of the shard steps', () => {
  it('completes every run whose Register, Prepare lane or Settle died after a side effect', async () => {
    work = await fixtureWork('sharded');
    const clean = await crashRun(null);
    expect(clean.problem).toBe('');
    // The dataset has byte ranges of one object and packs of small ones.
    const run = await new DynamoRunStore(shared.env.dynamo.client, shared.env.dynamo.table).getRun(
      'shards-none',
    );
    expect(run?.dataset.objects).toBe(SMALL + 1);
    const ranges = Math.ceil(Buffer.byteLength(String(datasetOf('shards-none').a)) / 1024);
    expect(ranges).toBeGreaterThan(3);
    const packs = (run?.dataset.shards ?? 0) - ranges;
    expect(packs).toBeGreaterThan(1);
    expect(packs).toBeLessThan(SMALL / 2);
    // The gzip object is in a pack with a plain one (inflated as it is read, resumed by passing over lines).
    const dataset = datasetOf('shards-none');
    const planned = Object.entries(dataset).map(([name, body]) => ({
      key: name,
      size: Buffer.byteLength(body),
      etag: name,
      gzip: name === SMALL_GZIP,
    }));
    const gzipShard = [...shardsOf(planned, 1024)].find(
      (s) =>
        s.object <= 1 + Number(SMALL_GZIP.slice(1)) && 1 + Number(SMALL_GZIP.slice(1)) < s.object + s.objects,
    );
    expect(gzipShard?.objects).toBeGreaterThan(1);
    const shardPoints = clean.plan.effects
      .map((effect, i) => ({ effect, point: i + 1 }))
      .filter(({ effect }) => SHARD_STATES.some((state) => effect.startsWith(`${state}:`)));
    for (const state of SHARD_STATES)
      expect(shardPoints.some((p) => p.effect.startsWith(`${state}:`))).toBe(true);
    const step = Math.max(1, Math.floor(shardPoints.length / POINTS));
    const points = shardPoints.filter((_, i) => i % step === 0).slice(0, POINTS);

    const failed: string[] = [];
    const crashedIn = new Set<string>();
    for (let first = 0; first < points.length; first += PARALLEL) {
      const runs = await Promise.all(
        points.slice(first, first + PARALLEL).map(({ point }) => crashRun(point)),
      );
      for (const run of runs) {
        if (run.plan.crashed) crashedIn.add(run.plan.crashed.split(':')[0] ?? '');
        if (!run.ok) failed.push(`${run.plan.crashed}: ${run.problem}`);
      }
    }
    expect(failed).toEqual([]);
    // The sampled crashes fell in each of the shard steps.
    for (const state of SHARD_STATES) expect(crashedIn).toContain(state);
  }, 300_000);
});
