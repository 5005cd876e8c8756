import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import type { Run } from '../../functions/core/run';
import type { OutageKind } from '../../local/emulator/faults';
import { startEmulator } from '../../local/emulator/server';
import { runLocally } from '../../local/runner';
import { e2eEnvironment, putRecords } from '../support/e2e';
import { ManualTime } from '../support/manual-time';
import { outputIds, partsPaidTwice } from '../support/run-checks';
import { withEmulator } from '../support/targets';

/**
 * OpenAI's outages and refusals are the run's, not the records': a run whose OpenAI answers 503, 401
 * (a revoked key) or 429 insufficient_quota to everything for a minute waits, says why on its record,
 * and completes with every record in outputs once OpenAI answers again. Time is the emulator's manual
 * clock, moved only by the run's Waits.
 */

const RECORDS = 100; // three parts of the fixture's 40 requests
const e2e = e2eEnvironment('slow-poll', 'openai-batch-outage-');

/** A run through a minute-long outage of `kind`, from the first batch create on, or from the start. */
async function runThrough(kind: OutageKind, from: 'first-create' | 'start') {
  const runId = `outage-${kind}-${from}`;
  const { env, loaded, definition } = e2e;
  const ids = await putRecords(env, runId, RECORDS);
  const runs = new DynamoRunStore(env.dynamo.client, env.dynamo.table);
  const seen: NonNullable<Run['blocked']>[] = [];
  const time = new ManualTime();
  const emulator = await startEmulator(
    time.emulatorOptions({ validationMs: 1_000, requestsPerSecond: 10, finalizingMs: 500, seed: 3 }),
  );
  emulator.faults.outage(
    kind,
    60_000,
    from === 'first-create' ? { method: 'POST', path: /^\/v1\/batches$/ } : undefined,
  );
  try {
    const target = withEmulator(env, emulator);
    const result = await runLocally(
      target,
      loaded,
      `inputs/${runId}.jsonl`,
      runId,
      time.runOptions(
        target,
        { lostCreateGraceMs: 5_000 },
        {
          afterTick: async () => {
            const blocked = (await runs.getRun(runId))?.blocked;
            if (blocked) seen.push(blocked);
          },
        },
      ),
      { definition },
    );
    const client = new OpenAI({ apiKey: target.openai.apiKey, baseURL: target.openai.baseURL });
    const errors = await env.s3.client.send(
      new ListObjectsV2Command({ Bucket: env.s3.bucket, Prefix: `runs/${runId}/errors/` }),
    );
    return {
      result,
      outputs: await outputIds(env, runId),
      ids: [...ids].sort(),
      errorObjects: errors.KeyCount ?? 0,
      paidTwice: await partsPaidTwice(client, runId),
      seen,
      final: await runs.getRun(runId),
      waits: time.waits,
    };
  } finally {
    await emulator.stop();
  }
}

describe('OpenAI unavailable or refusing', () => {
  it('waits out a minute of 503s after the first create, then completes with every record and no error', async () => {
    const run = await runThrough('unavailable', 'first-create');
    expect(run.result.output).toMatchObject({
      summary: { records: RECORDS, outputs: RECORDS, errors: 0, balanced: true },
    });
    expect(run.outputs).toEqual(run.ids);
    expect(run.errorObjects).toBe(0);
    expect(run.paidTwice).toBe(0);
    // The run said why it waited, and stopped saying it once OpenAI answered.
    expect(run.seen.length).toBeGreaterThan(0);
    expect(run.seen[0]).toMatchObject({ reason: 'openai_unavailable' });
    expect(run.seen[0]?.message).toMatch(/OpenAI is unavailable: 503/);
    expect(run.final?.blocked).toBeNull();
    // It backed off while blocked: no wait under the shortest poll, and longer waits than the shortest.
    expect(Math.max(...run.waits)).toBeGreaterThan(10);
  }, 120_000);

  it('waits while OpenAI refuses the key for a minute, then completes: no record ends in errors', async () => {
    const run = await runThrough('unauthorized', 'start');
    expect(run.result.output).toMatchObject({
      summary: { records: RECORDS, outputs: RECORDS, errors: 0, balanced: true },
    });
    expect(run.outputs).toEqual(run.ids);
    expect(run.errorObjects).toBe(0);
    expect(run.paidTwice).toBe(0);
    expect(run.seen[0]).toMatchObject({ reason: 'key_refused' });
    expect(run.seen[0]?.message).toMatch(/^OpenAI refused the API key: 401 Incorrect API key/);
    expect(run.final?.blocked).toBeNull();
  }, 120_000);

  it('waits while the quota is used up, then completes', async () => {
    const run = await runThrough('quota', 'first-create');
    expect(run.result.output).toMatchObject({
      summary: { records: RECORDS, outputs: RECORDS, errors: 0, balanced: true },
    });
    expect(run.outputs).toEqual(run.ids);
    expect(run.paidTwice).toBe(0);
    expect(run.seen[0]).toMatchObject({ reason: 'quota_exhausted' });
  }, 120_000);
});
