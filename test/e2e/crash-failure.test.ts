import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import type { Handlers } from '../../functions/handlers';
import { startEmulator } from '../../local/emulator/server';
import { runLocally } from '../../local/runner';
import { CrashPlan } from '../support/crash';
import { e2eEnvironment, fatalTickAt, putRecords } from '../support/e2e';
import { ManualTime } from '../support/manual-time';
import { outputIds, partsPaidTwice } from '../support/run-checks';
import { withEmulator } from '../support/targets';

/**
 * The crash walk of the failure path: a run fails for good at its third Tick with three batches half
 * done, and MarkFailed dies right after each of its side effects in turn (a cancel, a collected file, a
 * part or run write, the dataset's release), once; the state machine retries it. Every time the run
 * must end failed with each record OpenAI finished in outputs exactly once, the rest waiting in pending
 * parts (none in errors, none lost), every batch cancelled, and no part paid twice. The fatal Tick is
 * injected (no stand-in fails that way on its own); the stand-ins behind the crashing ports are real.
 */

const RECORDS = 100;
const e2e = e2eEnvironment('slow-poll', 'openai-batch-crash-failure-');

/** Every handler says which state it runs in (for the crash plan), and the third Tick fails for good. */
function failingAtThirdTick(plan: CrashPlan) {
  return (handlers: Handlers): Handlers => {
    const named = Object.fromEntries(
      Object.entries(fatalTickAt(3)(handlers)).map(([state, handler]) => [
        state,
        async (event: unknown) => {
          plan.state = state;
          return (handler as (e: unknown) => Promise<unknown>)(event);
        },
      ]),
    );
    return named as unknown as Handlers;
  };
}

async function failingRun(crashAfter: number | null) {
  const runId = `fail-crash-${crashAfter ?? 'none'}`;
  const { env, loaded, definition } = e2e;
  await putRecords(env, runId, RECORDS);
  const time = new ManualTime();
  const emulator = await startEmulator(
    time.emulatorOptions({ validationMs: 1_000, requestsPerSecond: 2, cancellingMs: 5_000, seed: 4 }),
  );
  const target = withEmulator(env, emulator);
  const plan = new CrashPlan(crashAfter);
  try {
    await runLocally(
      target,
      loaded,
      `inputs/${runId}.jsonl`,
      runId,
      time.runOptions(target, {
        lostCreateGraceMs: 5_000,
        wrap: {
          blobs: plan.ports.blobs,
          runs: plan.ports.runs,
          openai: plan.ports.openai,
          handlers: failingAtThirdTick(plan),
        },
      }),
      { definition },
    ).then(
      () => {
        throw new Error('the run completed, but its third Tick fails for good');
      },
      (caught: unknown) => {
        if (!/a bug found at tick 3/.test(String(caught))) throw caught;
      },
    );
    const runs = new DynamoRunStore(env.dynamo.client, env.dynamo.table);
    const client = new OpenAI({ apiKey: target.openai.apiKey, baseURL: target.openai.baseURL });
    const statuses: string[] = [];
    let finished = 0;
    for await (const batch of client.batches.list({ limit: 100 })) {
      if ((batch.metadata as Record<string, string> | null)?.openai_batch_run !== runId) continue;
      statuses.push(batch.status);
      finished += batch.request_counts?.completed ?? 0;
    }
    const parts = await runs.listParts(runId);
    const errors = await env.s3.client.send(
      new ListObjectsV2Command({ Bucket: env.s3.bucket, Prefix: `runs/${runId}/errors/` }),
    );
    return {
      plan,
      run: await runs.getRun(runId),
      outputs: await outputIds(env, runId),
      finished,
      statuses,
      pending: parts.filter((p) => p.status === 'pending').reduce((n, p) => n + p.requests, 0),
      unsettled: parts.filter((p) => p.status !== 'pending' && p.status !== 'done').length,
      errorObjects: errors.KeyCount ?? 0,
      paidTwice: await partsPaidTwice(client, runId),
    };
  } finally {
    await emulator.stop();
  }
}

describe('crash walk of a failing run', () => {
  it('ends failed with every finished record once and the rest pending, whatever MarkFailed effect it dies after', async () => {
    const clean = await failingRun(null);
    const points = clean.plan.effects
      .map((effect, i) => ({ effect, n: i + 1 }))
      .filter(({ effect }) => effect.startsWith('MarkFailed:'));
    expect(points.length).toBeGreaterThan(5);
    const rows: string[] = [];
    for (const { n, effect } of [{ n: null, effect: '(no crash)' }, ...points]) {
      const run = n === null ? clean : await failingRun(n);
      rows.push(
        `${n ?? 0} ${effect}: ${run.run?.status}, outputs ${run.outputs.length}, pending ${run.pending}`,
      );
      expect(run.run?.status, `crash after ${effect}`).toBe('failed');
      expect(new Set(run.outputs).size, `crash after ${effect}`).toBe(run.outputs.length);
      expect(run.outputs.length, `crash after ${effect}`).toBe(run.finished);
      expect(run.finished + run.pending, `crash after ${effect}`).toBe(RECORDS);
      expect(run.unsettled, `crash after ${effect}`).toBe(0);
      expect(run.errorObjects, `crash after ${effect}`).toBe(0);
      // Nothing is left running: cancelled, or completed while a crashed call was being tried again.
      expect(
        run.statuses.every((status) => status === 'cancelled' || status === 'completed'),
        `crash after ${effect}: ${run.statuses.join(', ')}`,
      ).toBe(true);
      expect(run.statuses, `crash after ${effect}`).toHaveLength(3);
      expect(run.paidTwice, `crash after ${effect}`).toBe(0);
    }
    process.stderr.write(`failure crash walk, ${points.length} points:\n${rows.join('\n')}\n`);
  }, 300_000);
});
