import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import type { BatchApi } from '../../functions/core/ports';
import type { RunSummary } from '../../functions/core/summary';
import { updateRun } from '../../functions/steps/runs';
import { type LoadedWork, loadWork } from '../../infra/works';
import { type Definition, synthesizeDefinition } from '../../local/definition';
import { startEmulator } from '../../local/emulator/server';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { ManualTime } from '../support/manual-time';
import { withEmulator } from '../support/targets';

/**
 * Cancelling a run (`openai-batch cancel` sets `cancelRequested` on the run record; its next Tick acts on
 * it): batches on OpenAI are cancelled and their finished results kept, nothing more is sent, and every
 * record not answered ends in errors, so that the run ends `cancelled` with input = outputs + errors.
 * Runs on manual time (test/support/manual-time.ts): the cancel lands at a chosen moment of the run.
 */

let dir: string;
let env: LocalEnvironment;
let runs: DynamoRunStore;
let loaded: LoadedWork;
let definition: Definition;
const time = new ManualTime({ maxTicks: 200 });

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-cancel-'));
  env = await startLocalEnvironment(
    dir,
    time.emulator({ validationMs: 1000, requestsPerSecond: 10, finalizingMs: 1000, seed: 7 }),
  );
  runs = new DynamoRunStore(env.dynamo.client, env.dynamo.table);
  loaded = await loadWork(new URL('../fixtures/works/chat.ts', import.meta.url).pathname);
  definition = (await synthesizeDefinition(loaded)).definition;
}, 60_000);

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** The work with other settings (the definition does not depend on them). */
const withSettings = (settings: Partial<LoadedWork['work']['settings']>): LoadedWork => ({
  ...loaded,
  work: { ...loaded.work, settings: { ...loaded.work.settings, ...settings } },
});

/** What `openai-batch cancel` does to the run record (local/cloud-commands.ts `cancelRun`). */
const requestCancel = (runId: string) => updateRun(runs, runId, (r) => ({ ...r, cancelRequested: true }));

async function putDataset(key: string, count: number, prefix: string): Promise<void> {
  const body = Array.from({ length: count }, (_, i) =>
    JSON.stringify({ id: `${prefix}${i}`, content: `q${i}` }),
  );
  await env.s3.client.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: key, Body: body.join('\n') }));
}

async function jsonl(prefix: string): Promise<Record<string, unknown>[]> {
  const listed = await env.s3.client.send(
    new ListObjectsV2Command({ Bucket: env.s3.bucket, Prefix: prefix }),
  );
  const lines: Record<string, unknown>[] = [];
  for (const object of listed.Contents ?? []) {
    const got = await env.s3.client.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: object.Key }));
    for (const line of ((await got.Body?.transformToString()) ?? '').split('\n'))
      if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
  }
  return lines;
}

/** Dataset lines of a run's outputs (record `<prefix>i` is on line i + 1) and errors, each as often as it appears. */
async function endedLines(runId: string, prefix: string): Promise<{ outputs: number[]; errors: number[] }> {
  const outputs = (await jsonl(`runs/${runId}/outputs/`)).map(
    (o) => Number(String(o.id).slice(prefix.length)) + 1,
  );
  const errors = (await jsonl(`runs/${runId}/errors/`)).map((e) => Number(e.line));
  return { outputs, errors };
}

const summaryOf = async (runId: string) =>
  JSON.parse(
    (await (
      await env.s3.client.send(
        new GetObjectCommand({ Bucket: env.s3.bucket, Key: `runs/${runId}/summary.json` }),
      )
    ).Body?.transformToString()) ?? '{}',
  ) as RunSummary;

describe('a cancelled run', () => {
  it('ends cancelled with the parts it had not sent in errors as run_cancelled, and sends nothing more', async () => {
    // One batch at a time: when the cancel comes, part 0 is on OpenAI and parts 1 and 2 wait their turn.
    const work = withSettings({ maxActiveBatches: 1 });
    await putDataset('inputs/cancel/unsent.jsonl', 120, 'u');
    const created = env.emulator?.engine.created ?? 0;
    const first = time.ticks + 1;
    const result = await runLocally(
      env,
      work,
      'inputs/cancel/unsent.jsonl',
      'unsent-1',
      time.runOptions(
        env,
        {},
        {
          // After the first Tick, which sent part 0.
          afterTick: async (_, tick) => {
            if (tick === first) await requestCancel('unsent-1');
          },
        },
      ),
      { definition },
    );
    expect(result.output).toMatchObject({ summary: { records: 120, balanced: true } });
    expect((await runs.getRun('unsent-1'))?.status).toBe('cancelled');
    expect((await summaryOf('unsent-1')).status).toBe('cancelled');
    expect(env.emulator?.engine.created).toBe(created + 1); // parts 1 and 2 never reached OpenAI

    const { outputs, errors } = await endedLines('unsent-1', 'u');
    expect([...outputs, ...errors].sort((a, b) => a - b)).toEqual(
      Array.from({ length: 120 }, (_, i) => i + 1),
    );
    const unsent = (await jsonl('runs/unsent-1/errors/')).filter((e) => e.code === 'run_cancelled');
    expect(unsent.map((e) => Number(e.line)).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 80 }, (_, i) => i + 41), // parts 1 and 2: lines 41 to 120
    );
    const parts = await runs.listParts('unsent-1');
    expect(parts.every((p) => p.status === 'done')).toBe(true);
  }, 60_000);

  it('does not resend the leftovers of an expired batch when the cancel comes while the Tick collects it', async () => {
    // 40 requests at 10 a second in a 3 s window: the batch expires with leftovers, which a run not
    // cancelled sends again in a resubmission part. The cancel is written at the moment Tick's poll sees
    // the expired batch: after Tick read the run, before it collects the part.
    const clock = new ManualTime({ maxTicks: 200 });
    const expiring = await startEmulator(
      clock.emulatorOptions({
        validationMs: 100,
        requestsPerSecond: 10,
        finalizingMs: 100,
        completionWindowMs: 3000,
      }),
    );
    try {
      const target = withEmulator(env, expiring);
      await putDataset('inputs/cancel/expiring.jsonl', 40, 'x');
      let cancelled = false;
      const cancelOnExpiry = (api: BatchApi): BatchApi =>
        Object.assign(Object.create(api) as BatchApi, {
          getBatch: async (id: string) => {
            const batch = await api.getBatch(id);
            if (batch.status === 'expired' && !cancelled) {
              cancelled = true;
              await requestCancel('expiring-1');
            }
            return batch;
          },
        });
      const result = await runLocally(
        target,
        loaded,
        'inputs/cancel/expiring.jsonl',
        'expiring-1',
        clock.runOptions(target, { wrap: { openai: cancelOnExpiry } }),
        { definition },
      );
      expect(cancelled).toBe(true);
      expect(result.output).toMatchObject({ summary: { records: 40, balanced: true } });
      expect((await runs.getRun('expiring-1'))?.status).toBe('cancelled');
      expect(expiring.engine.created).toBe(1); // nothing sent again
      const parts = await runs.listParts('expiring-1');
      expect(parts.map((p) => p.generation)).toEqual([0]); // no resubmission part
      expect((await summaryOf('expiring-1')).batches.resubmissionParts).toBe(0);

      const { outputs, errors } = await endedLines('expiring-1', 'x');
      expect(outputs.length).toBeGreaterThan(0); // the batch did part of the work before it expired
      expect(errors.length).toBeGreaterThan(0);
      expect([...outputs, ...errors].sort((a, b) => a - b)).toEqual(
        Array.from({ length: 40 }, (_, i) => i + 1),
      );
      // The leftovers end as what they are, expired: not as a part of the run that was never sent.
      expect(new Set((await jsonl('runs/expiring-1/errors/')).map((e) => e.code))).toEqual(
        new Set(['batch_expired']),
      );
    } finally {
      await expiring.stop();
    }
  }, 60_000);
});
