import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import { openaiWebhookVerifier } from '../../functions/adapters/webhook-verifier';
import { type ExecutionControl, receiveWebhook } from '../../functions/steps/webhook';
import { loadWork } from '../../infra/works';
import { synthesizeDefinition } from '../../local/definition';
import { signWebhook } from '../../local/emulator/webhooks';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { runFixture } from '../support/runs';

const EMULATOR = { validationMs: 200, requestsPerSecond: 500, finalizingMs: 100, tickMs: 20, seed: 8 };
const records = Array.from({ length: 100 }, (_, i) => ({ id: `w${i}`, content: `question ${i}` }));
const dirs: string[] = [];
const envs: LocalEnvironment[] = [];

async function environment(webhooks: boolean): Promise<LocalEnvironment> {
  const dir = mkdtempSync(join(tmpdir(), 'openai-batch-webhooks-'));
  dirs.push(dir);
  const env = await startLocalEnvironment(dir, { kind: 'emulator', options: EMULATOR }, false, { webhooks });
  envs.push(env);
  await env.s3.client.send(
    new PutObjectCommand({
      Bucket: env.s3.bucket,
      Key: 'inputs/questions.jsonl',
      Body: records.map((r) => JSON.stringify(r)).join('\n'),
    }),
  );
  return env;
}

afterAll(async () => {
  for (const env of envs) await env.stop();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe('webhooks: a run goes on seconds after OpenAI finishes, polling stays the safety net', () => {
  let loaded: Awaited<ReturnType<typeof loadWork>>;
  let definition: Awaited<ReturnType<typeof synthesizeDefinition>>['definition'];
  beforeAll(async () => {
    loaded = await loadWork(new URL('../fixtures/works/webhooks.ts', import.meta.url).pathname);
    definition = (await synthesizeDefinition(loaded)).definition;
  });

  it('finishes within seconds of the last batch while every poll waits an hour', async () => {
    const env = await environment(true);
    const states: string[] = [];
    // waitMs null: each Wait lasts what Tick chose, here an hour. Only webhooks can end this run early.
    const result = await runLocally(
      env,
      loaded,
      'inputs/questions.jsonl',
      'hooked',
      {
        waitMs: null,
        onState: (s) => states.push(s),
      },
      { definition },
    );
    const finishedAt = Date.now();
    expect(result.output).toMatchObject({
      summary: { records: 100, outputs: 100, errors: 0, balanced: true },
    });

    const client = new OpenAI({ apiKey: env.openai.apiKey, baseURL: env.openai.baseURL });
    const batches = (await client.batches.list({ limit: 100 })).data;
    expect(batches).toHaveLength(4); // 100 records, 25 a batch: each created once
    const lastCompleted = Math.max(...batches.map((b) => b.completed_at ?? 0)) * 1000;
    expect(finishedAt - lastCompleted).toBeLessThan(10_000);

    // Each batch's event woke the run: a new execution resumed it and the waiting one was stopped.
    const outcomes = env.webhooks?.received.map((r) => r.outcome) ?? [];
    expect(outcomes.filter((o) => o === 'woken').length).toBeGreaterThanOrEqual(1);
    expect(outcomes.every((o) => ['woken', 'tick running'].includes(o))).toBe(true);
    expect(result.executions).toBe(1 + outcomes.filter((o) => o === 'woken').length);
    expect(env.emulator?.webhooks?.deliveries.every((d) => d.delivered)).toBe(true);
  }, 60_000);

  it('still finishes by polling when no webhook ever arrives', async () => {
    const env = await environment(false);
    const result = await runLocally(
      env,
      loaded,
      'inputs/questions.jsonl',
      'polled',
      { waitMs: 20 },
      { definition },
    );
    expect(result.output).toMatchObject({
      summary: { records: 100, outputs: 100, errors: 0, balanced: true },
    });
    expect(result.executions).toBe(1);
  }, 60_000);

  describe('deliveries that must not get in', () => {
    let env: LocalEnvironment;
    let runs: DynamoRunStore;
    // Step Functions has no stand-in that records StartExecution calls outside a local run: a recording
    // control stands in for it here (the runs above use the local runner's real one).
    const started: string[] = [];
    const stopped: string[] = [];
    const control: ExecutionControl = {
      start: async (name) => {
        started.push(name);
      },
      stop: async (name) => {
        stopped.push(name);
      },
    };
    const secret = `whsec_${Buffer.from('a test signing secret of 32 bytes!').toString('base64')}`;
    const deliver = (body: string, headers: Record<string, string>) =>
      receiveWebhook(
        { runs, verify: openaiWebhookVerifier(async () => secret), control, now: Date.now, log: () => {} },
        { body, headers },
      );
    const event = (id: string, batchId = 'batch_hooked') =>
      JSON.stringify({ id, object: 'event', type: 'batch.completed', created_at: 1, data: { id: batchId } });
    const now = () => Math.floor(Date.now() / 1000);

    beforeAll(async () => {
      env = await environment(false);
      runs = new DynamoRunStore(env.dynamo.client, env.dynamo.table);
      await runs.createRun({ ...runFixture('waiting-run'), status: 'running', prepared: true }, false);
      const run = await runs.getRun('waiting-run');
      if (!run) throw new Error('no run');
      await runs.putRun({ ...run, waiting: 'waiting-run' }); // its execution is in its Wait state
      await runs.recordBatch('batch_hooked', 'waiting-run', 0);
    });

    it('refuses a bad, a missing and a stale signature, and acts once on a replayed event', async () => {
      const body = event('evt_good');
      const bad = { ...signWebhook(secret, 'evt_good', now(), body), 'webhook-signature': 'v1,AAAA' };
      expect((await deliver(body, bad)).statusCode).toBe(401);
      expect((await deliver(body, {})).statusCode).toBe(401);
      const stale = signWebhook(secret, 'evt_good', now() - 600, body); // 10 minutes old, well signed
      expect((await deliver(body, stale)).statusCode).toBe(401);
      const tampered = signWebhook(secret, 'evt_good', now(), body);
      expect((await deliver(event('evt_good', 'batch_other'), tampered)).statusCode).toBe(401);
      expect(started).toEqual([]);

      const good = signWebhook(secret, 'evt_good', now(), body);
      expect(JSON.parse((await deliver(body, good)).body)).toEqual({ outcome: 'woken' });
      expect(started).toHaveLength(1);
      expect(stopped).toEqual(['waiting-run']);
      expect((await runs.getRun('waiting-run'))?.waiting).toBeNull();

      const replay = signWebhook(secret, 'evt_good', now(), body); // the same event, signed again
      expect(JSON.parse((await deliver(body, replay)).body)).toEqual({ outcome: 'replayed' });
      expect(started).toHaveLength(1);
    });

    it('asks a running tick to come back at once, and ignores batches of no run', async () => {
      const body = event('evt_second');
      expect(JSON.parse((await deliver(body, signWebhook(secret, 'evt_second', now(), body))).body)).toEqual({
        outcome: 'tick running',
      });
      expect((await runs.getRun('waiting-run'))?.wakePending).toBe(true);
      const stranger = event('evt_stranger', 'batch_unknown');
      expect(
        JSON.parse((await deliver(stranger, signWebhook(secret, 'evt_stranger', now(), stranger))).body),
      ).toEqual({ outcome: 'unknown batch' });
      expect(started).toHaveLength(1);
    });
  });
});
