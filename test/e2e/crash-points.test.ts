import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListObjectsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadWork } from '../../infra/works';
import { type Definition, synthesizeDefinition } from '../../local/definition';
import { startEmulator } from '../../local/emulator/server';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { CrashPlan } from '../support/crash';
import { ManualTime } from '../support/manual-time';
import { type CrashRow, RELIABILITY_DIR } from '../support/reliability';
import { errorLines, outputIds, partsPaidTwice } from '../support/run-checks';

/**
 * Every crash point of a run: for each side effect a run makes (an S3 write or delete, a DynamoDB write,
 * an OpenAI upload, create, cancel or delete), a run whose handler dies right after that effect, once.
 * The state machine's retry (or the next Tick) carries on, and it does other work than the crashed
 * attempt did: it runs on a clock that uses its budget up after a few readings, so a retried Prepare
 * reads fewer lines (the dataset has bad lines, which end in errors) and a retried Tick collects a part
 * over several steps. Every run is on manual time (test/support/manual-time.ts) with an emulator of its
 * own, so it takes the same steps, and has the same crash points, whatever the machine's load. Each run must complete with every
 * good record in outputs and every bad line in errors exactly once, and no part paid twice on OpenAI (two
 * batches of one part that both ran).
 */

const RECORDS = 60; // two parts of the fixture's 40 requests at most
/** Bad lines among the records (1-based dataset lines): each must end in errors once. */
const BAD_LINES = [8, 23, 41, 57];
/** The steps' budget; the retry of a crashed handler reads a clock that passes it after four readings. */
const BUDGET_MS = 20_000;
const RETRY_CLOCK = { stepMs: 5_000, maxAheadMs: 40_000 };
const EMULATOR = { validationMs: 20, requestsPerSecond: 20_000, finalizingMs: 10 };
/** A run that has not ended by then is counted as not completed (it hung): a guard, never reached by a run that works. */
const RUN_LIMIT_MS = 120_000;

function within<T>(ms: number, work: Promise<T>): Promise<T> {
  return Promise.race([
    work,
    new Promise<T>((_, reject) =>
      setTimeout(() => reject(new Error(`not ended after ${ms} ms`)), ms).unref(),
    ),
  ]);
}
const PARALLEL = 6;

let env: LocalEnvironment;
let dir: string;
let loaded: Awaited<ReturnType<typeof loadWork>>;
let definition: Definition;

/** A run over its own dataset (dedup would refuse the same content twice), crashing after effect n. */
async function crashRun(n: number | null): Promise<{ row: CrashRow; plan: CrashPlan; outputFiles: number }> {
  const runId = `crash-${n ?? 'none'}`;
  const ids = Array.from({ length: RECORDS }, (_, i) => `${runId}-${i}`);
  const lines = ids.map((id) => JSON.stringify({ id, content: `question ${id}` }));
  for (const line of BAD_LINES) lines.splice(line - 1, 0, `{"id":"bad line ${line}"`);
  await env.s3.client.send(
    new PutObjectCommand({ Bucket: env.s3.bucket, Key: `inputs/${runId}.jsonl`, Body: lines.join('\n') }),
  );
  const plan = new CrashPlan(n, RETRY_CLOCK);
  // Manual time, with an emulator of the run's own: the run takes the same steps whatever the load.
  const time = new ManualTime({ maxTicks: 300 });
  const emulator = await startEmulator(time.emulatorOptions({ ...EMULATOR, seed: seedOf(runId) }));
  const target: LocalEnvironment = {
    ...env,
    emulator,
    openai: { baseURL: emulator.url, apiKey: 'sk-local' },
  };
  let completed = false;
  let paidTwice = 0;
  try {
    const options = plan.runOptions(time, target, {
      budgetMs: BUDGET_MS,
      // A create that may have been lost is looked for this long before its part is sent again.
      lostCreateGraceMs: 10_000,
    });
    const result = await within(
      RUN_LIMIT_MS,
      runLocally(target, loaded, `inputs/${runId}.jsonl`, runId, options, {
        definition,
      }),
    );
    completed = (result.output.summary as { balanced?: boolean } | undefined)?.balanced === true;
  } catch (caught) {
    completed = false;
    process.stderr.write(`crash point ${n}: ${String(caught)}\n`);
  } finally {
    paidTwice = await partsPaidTwice(new OpenAI({ apiKey: 'sk-local', baseURL: emulator.url }), runId);
    await emulator.stop();
  }
  process.stderr.write(
    `crash point ${n} after ${plan.crashed}: ${completed ? 'completed' : 'NOT completed'}\n`,
  );
  const found = await outputIds(env, runId);
  const errored = await errorLines(env, runId);
  // Each record is one line somewhere: a good one in outputs (by id), a bad one in errors (by line).
  const written = [...found, ...errored.map((line) => `line ${line}`)];
  const unique = new Set(written);
  const expected = [...ids, ...BAD_LINES.map((line) => `line ${line}`)];
  const outputFiles =
    (
      await env.s3.client.send(
        new ListObjectsCommand({ Bucket: env.s3.bucket, Prefix: `runs/${runId}/outputs/` }),
      )
    ).Contents?.length ?? 0;
  return {
    plan,
    outputFiles,
    row: {
      crashPoint: n ?? 0,
      after: plan.crashed ?? '(no crash)',
      completed,
      outputs: found.length,
      missing: expected.filter((id) => !unique.has(id)).length,
      duplicated: written.length - unique.size + written.filter((w) => !expected.includes(w)).length,
      partsPaidTwice: paidTwice,
    },
  };
}

/** A seed from a run id: emulators with one seed make the same batch ids, and the run table is shared. */
function seedOf(runId: string): number {
  let seed = 6;
  for (const char of runId) seed = (seed * 31 + char.charCodeAt(0)) % 2_147_483_647;
  return seed;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-crash-'));
  env = await startLocalEnvironment(dir, { kind: 'emulator', options: {} });
  loaded = await loadWork(new URL('../fixtures/works/chat.ts', import.meta.url).pathname);
  definition = (await synthesizeDefinition(loaded)).definition;
});

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('crash points: a handler that dies between two side effects loses nothing and pays nothing twice', () => {
  it('completes every run, whichever side effect its handler died after', async () => {
    const clean = await crashRun(null);
    expect(clean.row).toMatchObject({ completed: true, outputs: RECORDS, missing: 0, duplicated: 0 });
    const points = clean.plan.effects.length;
    // Every state that writes has crash points: Register, Prepare, Tick, Finalize, CleanUp.
    for (const state of ['Register', 'Prepare', 'Tick', 'Finalize', 'CleanUp'])
      expect(clean.plan.effects.some((e) => e.startsWith(`${state}:`))).toBe(true);

    const rows: CrashRow[] = [];
    let retriedFast = 0;
    let collectedInSteps = 0; // runs whose retried Tick collected a part over several steps (2 parts)
    for (let first = 1; first <= points; first += PARALLEL) {
      const group = Array.from({ length: Math.min(PARALLEL, points - first + 1) }, (_, i) => first + i);
      const runs = await Promise.all(group.map((n) => crashRun(n)));
      rows.push(...runs.map((r) => r.row));
      retriedFast += runs.filter((r) => r.plan.fastRetries.length > 0).length;
      collectedInSteps += runs.filter((r) => r.outputFiles > 2).length;
    }
    mkdirSync(RELIABILITY_DIR, { recursive: true });
    writeFileSync(join(RELIABILITY_DIR, 'crash-points.json'), `${JSON.stringify(rows, null, 2)}\n`);

    expect(rows.filter((r) => r.after === '(no crash)')).toEqual([]); // each crash point was reached
    expect(retriedFast).toBe(points); // every crashed handler's retry ran on the fast clock
    expect(collectedInSteps).toBeGreaterThan(0);
    expect(
      rows.filter((r) => !r.completed || r.missing > 0 || r.duplicated > 0 || r.partsPaidTwice > 0),
    ).toEqual([]);
  }, 240_000);
});
