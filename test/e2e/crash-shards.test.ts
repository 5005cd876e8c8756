import { PutObjectCommand } from '@aws-sdk/client-s3';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { startEmulator } from '../../local/emulator/server';
import { type LocalEnvironment, runLocally } from '../../local/runner';
import { CrashPlan } from '../support/crash';
import { type FixtureWork, fixtureWork } from '../support/e2e';
import { localEnvironment } from '../support/local-environment';
import { ManualTime } from '../support/manual-time';
import { errorLines, outputIds, partsPaidTwice } from '../support/run-checks';

/**
 * The crash walk over the shard steps: a dataset cut into many small shards (the `sharded` fixture work:
 * shards of 1 KiB, three lanes), with bad lines in several shards and custom_ids used again across
 * shards, whose Register, Prepare (a lane) or Settle handler dies right after one of its side effects,
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

function datasetOf(runId: string): string {
  const lines: string[] = [];
  for (let line = 1; line <= LINES; line++) {
    if (BAD.includes(line)) lines.push(`{"id":"${runId}-bad-${line}"`);
    else {
      const id = `${runId}-${REPEATS[line] ?? line}`;
      lines.push(JSON.stringify({ id, content: `question ${id} in a dataset cut into shards` }));
    }
  }
  return `${lines.join('\n')}\n`;
}

/** What a run must end with: each good id in outputs once, and these lines in errors once. */
const GOOD_LINES = Array.from({ length: LINES }, (_, i) => i + 1).filter(
  (line) => !BAD.includes(line) && REPEATS[line] === undefined,
);
const ERROR_LINES = [...BAD, ...Object.keys(REPEATS).map(Number)].sort((a, b) => a - b);

async function crashRun(n: number | null): Promise<{ plan: CrashPlan; ok: boolean; problem: string }> {
  const env = shared.env;
  const runId = `shards-${n ?? 'none'}`;
  const key = `inputs/${runId}.jsonl`;
  await env.s3.client.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: key, Body: datasetOf(runId) }));
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
  const expected = GOOD_LINES.map((line) => `${runId}-${line}`).sort();
  if (JSON.stringify(outputs) !== JSON.stringify(expected))
    problem += ` outputs ${outputs.length}/${expected.length}`;
  const errors = await errorLines(env, runId);
  if (JSON.stringify(errors) !== JSON.stringify(ERROR_LINES)) problem += ` error lines ${errors.join(',')}`;
  return { plan, ok: problem === '', problem };
}

describe('crash walk of the shard steps', () => {
  it('completes every run whose Register, Prepare lane or Settle died after a side effect', async () => {
    work = await fixtureWork('sharded');
    const clean = await crashRun(null);
    expect(clean.problem).toBe('');
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
