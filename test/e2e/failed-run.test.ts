import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import { MAX_WIND_DOWN_STALLS } from '../../functions/steps/fail';
import { startEmulator } from '../../local/emulator/server';
import { runLocally } from '../../local/runner';
import { e2eEnvironment, fatalTickAt, putRecords } from '../support/e2e';
import { ManualTime } from '../support/manual-time';
import { outputIds } from '../support/run-checks';
import { withEmulator } from '../support/targets';

/**
 * A run that fails for good while its batches are on OpenAI keeps what OpenAI finished: MarkFailed
 * cancels the batches in flight, waits for them to end, collects their partial results into outputs,
 * and keeps the requests OpenAI did not run in pending parts (not in errors) for a resume. The failure
 * is injected as a fatal error of the third Tick (no stand-in fails that way on its own).
 */

const RECORDS = 100; // three parts of the fixture's 40 requests
const e2e = e2eEnvironment('slow-poll', 'openai-batch-failed-');

describe('a run that fails with batches in flight', () => {
  it('cancels them, collects what OpenAI finished, keeps the rest pending, and ends failed', async () => {
    const runId = 'fails-midway';
    const { env, loaded, definition } = e2e;
    await putRecords(env, runId, RECORDS);
    const time = new ManualTime();
    // Two requests a second: a batch of 40 is about half done at the third Tick (the emulator starts a
    // batch when a poll finds it validated, 10 s in; the third Tick comes 10 s later).
    const emulator = await startEmulator(
      time.emulatorOptions({ validationMs: 1_000, requestsPerSecond: 2, cancellingMs: 5_000, seed: 4 }),
    );
    const target = withEmulator(env, emulator);
    try {
      const run = runLocally(
        target,
        loaded,
        `inputs/${runId}.jsonl`,
        runId,
        time.runOptions(target, {
          wrap: { handlers: fatalTickAt(3) },
        }),
        { definition },
      );
      await expect(run).rejects.toThrow(/a bug found at tick 3/);

      const runs = new DynamoRunStore(env.dynamo.client, env.dynamo.table);
      const failed = await runs.getRun(runId);
      expect(failed?.status).toBe('failed');
      expect(failed?.failing).toBeNull();
      expect(failed?.error).toMatch(/^InvariantError: a bug found at tick 3/);
      expect(failed?.error).toMatch(/resume the run/);

      // Nothing is left running on OpenAI: every batch of the run was cancelled and ended.
      const client = new OpenAI({ apiKey: target.openai.apiKey, baseURL: target.openai.baseURL });
      const batches: OpenAI.Batch[] = [];
      for await (const batch of client.batches.list({ limit: 100 }))
        if ((batch.metadata as Record<string, string> | null)?.openai_batch_run === runId)
          batches.push(batch);
      expect(batches).toHaveLength(3);
      expect(batches.map((b) => b.status)).toEqual(['cancelled', 'cancelled', 'cancelled']);
      const finished = batches.reduce((n, b) => n + (b.request_counts?.completed ?? 0), 0);
      expect(finished).toBeGreaterThan(0);
      expect(finished).toBeLessThan(RECORDS);

      // What OpenAI finished is in outputs; what it did not run waits in pending parts, not in errors.
      const outputs = await outputIds(env, runId);
      expect(outputs).toHaveLength(finished);
      expect(new Set(outputs).size).toBe(finished);
      const errors = await env.s3.client.send(
        new ListObjectsV2Command({ Bucket: env.s3.bucket, Prefix: `runs/${runId}/errors/` }),
      );
      expect(errors.KeyCount ?? 0).toBe(0);
      const parts = await runs.listParts(runId);
      const pending = parts.filter((p) => p.status === 'pending');
      expect(parts.filter((p) => p.status !== 'pending' && p.status !== 'done')).toEqual([]);
      expect(pending.reduce((n, p) => n + p.requests, 0)).toBe(RECORDS - finished);
    } finally {
      await emulator.stop();
    }
  }, 120_000);
});

describe('a run whose wind-down itself keeps failing', () => {
  it('is marked failed as it is after a few calls in a row, naming the first failure, and ends', async () => {
    const runId = 'wind-down-breaks';
    const { env, loaded, definition } = e2e;
    await putRecords(env, runId, RECORDS);
    const time = new ManualTime();
    const emulator = await startEmulator(
      time.emulatorOptions({ validationMs: 1_000, requestsPerSecond: 2, cancellingMs: 5_000, seed: 5 }),
    );
    const target = withEmulator(env, emulator);
    let broken = false;
    let windDowns = 0;
    try {
      const run = runLocally(
        target,
        loaded,
        `inputs/${runId}.jsonl`,
        runId,
        time.runOptions(target, {
          wrap: {
            // Once the run fails, every S3 write is refused: collecting cannot work (no stand-in breaks so).
            blobs: (store) =>
              Object.assign(Object.create(store) as typeof store, {
                write: (key: string, body: AsyncIterable<Uint8Array>) =>
                  broken ? Promise.reject(new Error('S3 refuses every write')) : store.write(key, body),
              }),
            handlers: (handlers) => {
              const failing = fatalTickAt(3, () => {
                broken = true;
              })(handlers);
              return {
                ...failing,
                MarkFailed: async (event: unknown) => {
                  windDowns += 1;
                  return failing.MarkFailed(event);
                },
              };
            },
          },
        }),
        { definition },
      );
      await expect(run).rejects.toThrow(/a bug found at tick 3/);
      const runs = new DynamoRunStore(env.dynamo.client, env.dynamo.table);
      const failed = await runs.getRun(runId);
      expect(failed?.status).toBe('failed');
      expect(failed?.error).toMatch(/^InvariantError: a bug found at tick 3/);
      expect(failed?.error).toMatch(/resume the run/);
      // One call cancels the batches (no S3 write), then MAX_WIND_DOWN_STALLS calls in a row stop on S3.
      expect(windDowns).toBe(1 + MAX_WIND_DOWN_STALLS);
    } finally {
      await emulator.stop();
    }
  }, 120_000);
});
