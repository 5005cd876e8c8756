import { GetObjectCommand, ListObjectsCommand } from '@aws-sdk/client-s3';
import OpenAI from 'openai';
import { beforeAll, describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import type { RunSummary } from '../../functions/core/summary';
import { updateRun } from '../../functions/steps/runs';
import { type EmulatorOptions, startEmulator } from '../../local/emulator/server';
import { type LocalEnvironment, runLocally } from '../../local/runner';
import { startWebhookReceiver } from '../../local/webhook-receiver';
import { CrashPlan } from '../support/crash';
import { type FixtureWork, fixtureWork, putRecords } from '../support/e2e';
import { localEnvironment } from '../support/local-environment';
import { ManualTime } from '../support/manual-time';
import { outputIds, partsPaidTwice } from '../support/run-checks';

/**
 * The crash walk (test/e2e/crash-points.test.ts) over paths a plain run does not take: leftovers of an
 * expired batch sent again, a cancel requested mid-run, and a run woken by a webhook. For each path a
 * clean run first counts its side effects (S3 and DynamoDB writes, OpenAI calls, the webhook receiver's
 * writes) and shows that it took the path; then runs crash right after side effect n, once, and the state
 * machine's retry carries on. Each run must end (completed, or cancelled on the cancel path) with every
 * record exactly once in outputs or errors, and no part paid twice (two batches of one part that ran).
 *
 * Every run is on manual time (test/support/manual-time.ts), with an emulator and a clock of its own, so
 * a run takes the same steps whatever the machine's load, and runs go in parallel.
 *
 * A run has 60 to 120 side effects, too many to walk each on every path in a test of under a minute:
 * crash points are sampled, deterministically: every point whose effect is the path's own (the write of a
 * resubmission part and the one before it; the first effects after the cancel and each batch cancel; the
 * receiver's event record and the writes after it), at most {@link OWN_POINTS}, and {@link SPREAD_POINTS}
 * evenly spaced over the whole run.
 */

const OWN_POINTS = 3;
const SPREAD_POINTS = 4;
const PARALLEL = 4;

// S3 and DynamoDB are shared; each run brings its own emulator on its own clock.
const shared = localEnvironment('openai-batch-crash-paths-', {
  kind: 'url',
  baseURL: 'http://127.0.0.1:9/v1',
  apiKey: 'unused',
});
let runs: DynamoRunStore;
let chat: FixtureWork;
let hooked: FixtureWork;

/** A path of a run, and how its clean run shows it took it. */
interface Path {
  readonly name: string;
  readonly work: () => FixtureWork;
  readonly records: number;
  readonly emulator: EmulatorOptions;
  readonly webhooks: boolean;
  /** The Tick after which the run is cancelled (as `openai-batch cancel` does). */
  readonly cancelAfterTick?: number;
  /** The run's final status. */
  readonly ends: 'completed' | 'cancelled';
  /** Whether a side effect (`State: port.method`, index into the clean run's effects) is the path's own. */
  readonly own: (effects: readonly string[], index: number, cancelledAt: number | null) => boolean;
}

/** What one run did. */
interface Outcome {
  readonly crashPoint: number | null;
  readonly crashed: string | null;
  readonly status: string | null;
  readonly error: string | null;
  readonly missing: number;
  readonly duplicated: number;
  readonly paidTwice: number;
  readonly effects: readonly string[];
  readonly cancelledAt: number | null;
  readonly executions: number;
  readonly summary: RunSummary | null;
  readonly wakes: number;
}

async function text(key: string): Promise<string> {
  const { env } = shared;
  const got = await env.s3.client.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: key }));
  return (await got.Body?.transformToString()) ?? '';
}

/** The dataset line of every error line of a run, as often as it appears. */
async function errorLinesOf(runId: string): Promise<number[]> {
  const { env } = shared;
  const listed = await env.s3.client.send(
    new ListObjectsCommand({ Bucket: env.s3.bucket, Prefix: `runs/${runId}/errors/` }),
  );
  const found: number[] = [];
  for (const object of listed.Contents ?? [])
    for (const line of (await text(object.Key ?? '')).split('\n'))
      if (line) found.push(Number((JSON.parse(line) as { line: unknown }).line));
  return found;
}

/** A run of a path over its own dataset (dedup would refuse the same content twice), crashing after effect n. */
async function crashRun(path: Path, n: number | null): Promise<Outcome> {
  const runId = `${path.name}-${n ?? 'clean'}`;
  const { env } = shared;
  const ids = await putRecords(env, runId, path.records);
  const time = new ManualTime({ maxTicks: 300 });
  const receiver = path.webhooks ? await startWebhookReceiver() : null;
  const emulator = await startEmulator({
    // A seed of the run's own: emulators with one seed make the same batch ids, and the run table that
    // maps a batch id to its run (for webhooks) is shared.
    ...time.emulatorOptions({ ...path.emulator, seed: seedOf(runId) }),
    ...(receiver ? { webhook: { url: receiver.url, secret: receiver.secret } } : {}),
  });
  const target: LocalEnvironment = {
    ...env,
    emulator,
    openai: { baseURL: emulator.url, apiKey: 'sk-local' },
    webhooks: receiver,
  };
  const plan = new CrashPlan(n);
  const { loaded, definition } = path.work();
  let cancelledAt: number | null = null;
  let status: string | null = null;
  let error: string | null = null;
  let executions = 0;
  let paidTwice = 0;
  try {
    const result = await runLocally(
      target,
      loaded,
      `inputs/${runId}.jsonl`,
      runId,
      time.runOptions(
        target,
        {
          lostCreateGraceMs: 10_000,
          wrap: plan.ports,
          onState: (state) => {
            plan.state = state;
          },
        },
        {
          afterTick: async (_, tick) => {
            if (path.cancelAfterTick === undefined || cancelledAt !== null || tick < path.cancelAfterTick)
              return;
            // What `openai-batch cancel` does (local/cloud-commands.ts), on the store itself: not a crash point.
            await updateRun(runs, runId, (r) => ({ ...r, cancelRequested: true }));
            cancelledAt = plan.effects.length;
          },
        },
      ),
      { definition },
    );
    executions = result.executions;
  } catch (caught) {
    error = String(caught);
  } finally {
    paidTwice = await partsPaidTwice(new OpenAI({ apiKey: 'sk-local', baseURL: emulator.url }), runId);
    await emulator.stop();
    await receiver?.stop();
  }
  status = (await runs.getRun(runId))?.status ?? null;
  process.stderr.write(
    `${path.name} crash point ${n ?? '-'} after ${plan.crashed ?? '(no crash)'}: ${status ?? 'no run'}${error ? ` (${error})` : ''}\n`,
  );
  const outputs = await outputIds(env, runId);
  const lines = await errorLinesOf(runId);
  // Each record is one line somewhere: in outputs by its id, in errors by its dataset line.
  const written = [...outputs, ...lines.map((line) => ids[line - 1] ?? `line ${line}`)];
  const unique = new Set(written);
  return {
    crashPoint: n,
    crashed: plan.crashed,
    status,
    error,
    missing: ids.filter((id) => !unique.has(id)).length,
    duplicated: written.length - unique.size + written.filter((w) => !ids.includes(w)).length,
    paidTwice,
    effects: plan.effects,
    cancelledAt,
    executions,
    summary:
      status === 'completed' || status === 'cancelled'
        ? (JSON.parse(await text(`runs/${runId}/summary.json`)) as RunSummary)
        : null,
    wakes: receiver?.received.filter((r) => r.outcome === 'woken').length ?? 0,
  };
}

/** A seed from a run id, the same on every run of the test. */
function seedOf(runId: string): number {
  let seed = 7;
  for (const char of runId) seed = (seed * 31 + char.charCodeAt(0)) % 2_147_483_647;
  return seed;
}

/** The crash points to walk: the path's own ones first (at most OWN_POINTS), and SPREAD_POINTS evenly spaced. */
function sample(path: Path, clean: Outcome): number[] {
  const count = clean.effects.length;
  const own: number[] = [];
  for (let i = 0; i < count && own.length < OWN_POINTS; i++)
    if (path.own(clean.effects, i, clean.cancelledAt)) own.push(i + 1);
  const spread = Array.from({ length: SPREAD_POINTS }, (_, k) =>
    Math.max(1, Math.round(((k + 0.5) * count) / SPREAD_POINTS)),
  );
  return [...new Set([...own, ...spread])].sort((a, b) => a - b);
}

/** Runs jobs, at most `limit` at a time. */
async function inParallel<T>(jobs: (() => Promise<T>)[], limit: number): Promise<T[]> {
  const results: T[] = [];
  for (let first = 0; first < jobs.length; first += limit)
    results.push(...(await Promise.all(jobs.slice(first, first + limit).map((job) => job()))));
  return results;
}

const PATHS: Path[] = [
  {
    // 60 requests at 10 a second in a 3 s window: both batches expire part-way, their leftovers go again.
    name: 'resubmit',
    work: () => chat,
    records: 60,
    emulator: { validationMs: 100, requestsPerSecond: 10, finalizingMs: 100, completionWindowMs: 3000 },
    webhooks: false,
    ends: 'completed',
    own: (effects, i) =>
      /Tick: runs\.addParts/.test(effects[i] ?? '') || /Tick: runs\.addParts/.test(effects[i + 1] ?? ''),
  },
  {
    // Three parts, two batches at a time, 10 requests a second: the cancel after the second Tick finds
    // two batches part-way and one part not sent.
    name: 'cancel',
    work: () => ({
      ...chat,
      loaded: {
        ...chat.loaded,
        work: { ...chat.loaded.work, settings: { ...chat.loaded.work.settings, maxActiveBatches: 2 } },
      },
    }),
    records: 120,
    emulator: { validationMs: 100, requestsPerSecond: 10, finalizingMs: 100, cancellingMs: 500 },
    webhooks: false,
    cancelAfterTick: 2,
    ends: 'cancelled',
    own: (effects, i, cancelledAt) =>
      /openai\.cancelBatch/.test(effects[i] ?? '') ||
      (cancelledAt !== null && i >= cancelledAt && i < cancelledAt + 2),
  },
  {
    // Polls an hour apart; each batch's end is news a webhook brings, waking the run in a new execution.
    // Parts of 25 and 15 requests at 10 a second end in different seconds: one wake each.
    name: 'webhook',
    work: () => hooked,
    records: 40,
    emulator: { validationMs: 1000, requestsPerSecond: 10, finalizingMs: 1000 },
    webhooks: true,
    ends: 'completed',
    own: (effects, i) =>
      /runs\.recordEvent/.test(effects[i] ?? '') || /runs\.recordEvent/.test(effects[i - 1] ?? ''),
  },
];

beforeAll(async () => {
  runs = new DynamoRunStore(shared.env.dynamo.client, shared.env.dynamo.table);
  chat = await fixtureWork('chat');
  hooked = await fixtureWork('webhooks');
}, 60_000);

describe('crash points on the resubmission, cancel and webhook-wake paths', () => {
  it('ends every run with each record once and no part paid twice, whichever side effect it died after', async () => {
    const cleans = await Promise.all(PATHS.map((path) => crashRun(path, null)));
    for (const [i, clean] of cleans.entries()) {
      const path = PATHS[i] as Path;
      expect(clean, path.name).toMatchObject({
        status: path.ends,
        error: null,
        missing: 0,
        duplicated: 0,
        paidTwice: 0,
      });
    }
    const [resubmit, cancel, webhook] = cleans as [Outcome, Outcome, Outcome];
    // Each clean run took its path.
    expect(resubmit.summary?.batches.resubmissionParts).toBeGreaterThan(0);
    expect(cancel.cancelledAt).not.toBeNull();
    expect(cancel.effects.some((e) => e.includes('openai.cancelBatch'))).toBe(true);
    expect(cancel.summary?.counts.outputs).toBeGreaterThan(0);
    expect(webhook.wakes).toBe(2);
    expect(webhook.executions).toBe(3);

    const jobs = PATHS.flatMap((path, i) =>
      sample(path, cleans[i] as Outcome).map(
        (n) => () => crashRun(path, n).then((o) => ({ path: path.name, ends: path.ends, ...o })),
      ),
    );
    const outcomes = await inParallel(jobs, PARALLEL);
    const report = outcomes.map(
      ({ path, crashPoint, crashed, status, error, missing, duplicated, paidTwice }) => ({
        path,
        crashPoint,
        crashed,
        status,
        error,
        missing,
        duplicated,
        paidTwice,
      }),
    );
    expect(report.filter((r) => r.crashed === null)).toEqual([]); // each sampled point was reached
    expect(
      outcomes
        .filter((o) => o.status !== o.ends || o.missing > 0 || o.duplicated > 0 || o.paidTwice > 0)
        .map((o) => ({
          path: o.path,
          crashPoint: o.crashPoint,
          crashed: o.crashed,
          status: o.status,
          error: o.error,
          missing: o.missing,
          duplicated: o.duplicated,
          paidTwice: o.paidTwice,
        })),
    ).toEqual([]);
  }, 120_000);
});
