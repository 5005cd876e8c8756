import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import type { RunSummary } from '../../functions/core/summary';
import { type LoadedWork, loadWork } from '../../infra/works';
import type { Definition } from '../../local/definition';
import { synthesizeDefinition } from '../../local/definition';
import { startEmulator } from '../../local/emulator/server';
import {
  type LocalEnvironment,
  type LocalRunOptions,
  runLocally,
  startLocalEnvironment,
} from '../../local/runner';
import { ManualTime } from '../support/manual-time';
import { withEmulator } from '../support/targets';

const fixture = (name: string) => new URL(`../fixtures/works/${name}.ts`, import.meta.url).pathname;

let env: LocalEnvironment;
let dir: string;
const works: Record<string, { loaded: LoadedWork; definition: Definition }> = {};

async function work(name: string) {
  if (!works[name]) {
    const loaded = await loadWork(fixture(name));
    works[name] = { loaded, definition: (await synthesizeDefinition(loaded)).definition };
  }
  return works[name];
}

async function putDataset(key: string, lines: unknown[]): Promise<void> {
  const body = lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n');
  await env.s3.client.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: key, Body: body }));
}

async function text(key: string): Promise<string> {
  const object = await env.s3.client.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: key }));
  return object.Body?.transformToString() ?? '';
}

async function keys(prefix: string): Promise<string[]> {
  const listed = await env.s3.client.send(
    new ListObjectsV2Command({ Bucket: env.s3.bucket, Prefix: prefix }),
  );
  return (listed.Contents ?? []).map((o) => o.Key ?? '');
}

async function jsonl(prefix: string): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for (const key of await keys(prefix)) {
    for (const line of (await text(key)).split('\n')) if (line) out.push(JSON.parse(line));
  }
  return out;
}

async function run(
  name: string,
  dataset: string,
  runId: string,
  options: LocalRunOptions = {},
  target: LocalEnvironment = env,
) {
  const { loaded, definition } = await work(name);
  return runLocally(target, loaded, dataset, runId, { waitMs: 20, ...options }, { definition });
}

const summaryOf = async (runId: string) => JSON.parse(await text(`runs/${runId}/summary.json`)) as RunSummary;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-e2e-'));
  env = await startLocalEnvironment(dir, {
    kind: 'emulator',
    options: { validationMs: 30, requestsPerSecond: 5000, finalizingMs: 20, tickMs: 10, seed: 42 },
  });
});

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('a run of the synthesized state machine against the stand-ins', () => {
  it('completes a chat work: every record in outputs, joined to its id, balanced, and nothing left behind', async () => {
    const records = Array.from({ length: 100 }, (_, i) => ({ id: `c${i}`, content: `question ${i}` }));
    await putDataset('inputs/e2e-chat/questions.jsonl', [...records, '', '{broken json']);
    const result = await run('chat', 's3://openai-batch-local/inputs/e2e-chat/questions.jsonl', 'chat-1');
    expect(result.output).toMatchObject({
      summary: { records: 101, outputs: 100, errors: 1, balanced: true },
    });

    const outputs = await jsonl('runs/chat-1/outputs/');
    expect(outputs.map((o) => o.id).sort()).toEqual(records.map((r) => r.id).sort());
    expect(outputs[0]).toMatchObject({ answer: expect.any(String), tokens: expect.any(Number) });
    const errors = await jsonl('runs/chat-1/errors/');
    expect(errors).toEqual([expect.objectContaining({ stage: 'dataset', code: 'invalid_json', line: 102 })]);

    const summary = await summaryOf('chat-1');
    expect(summary).toMatchObject({
      status: 'completed',
      counts: { records: 101, outputs: 100, errors: 1 },
      reconciliation: { balanced: true },
    });
    expect(summary.batches.parts).toBe(3);
    expect(summary.usage.inputTokens).toBeGreaterThan(0);
    expect(summary.cost.actualUsd).toBeGreaterThan(0);
    expect(result.notifier.events.map((e) => e.detailType)).toEqual(['Run Completed']);

    // cleanUp: no file of the run is left on OpenAI, and no request file or checkpoint in S3.
    const client = new OpenAI({ apiKey: 'sk-test', baseURL: env.openai.baseURL });
    const files = [];
    for await (const file of client.files.list()) files.push(file);
    expect(files.filter((f) => f.filename.startsWith('chat-1.') || f.filename.includes('batch_'))).toEqual(
      [],
    );
    expect(await keys('runs/chat-1/requests/')).toEqual([]);
    expect(await keys('runs/chat-1/state/')).toEqual([]);
  });

  it('completes an embeddings work with vectors joined to integer ids', async () => {
    await putDataset(
      'inputs/e2e-embed/texts.jsonl',
      Array.from({ length: 60 }, (_, i) => ({ id: i, text: `text number ${i}` })),
    );
    const result = await run('embed', 'inputs/e2e-embed/texts.jsonl', 'embed-1');
    expect(result.output).toMatchObject({ summary: { outputs: 60, errors: 0, balanced: true } });
    const outputs = await jsonl('runs/embed-1/outputs/');
    expect(outputs.map((o) => o.id).sort()).toEqual(Array.from({ length: 60 }, (_, i) => String(i)).sort());
    expect(outputs[0]?.vector).toHaveLength(8);
  });

  it('refuses a dataset the work already ran, naming the run that holds it', async () => {
    await putDataset('inputs/e2e-chat/again.jsonl', [{ id: 'a', content: 'once' }]);
    await run('chat', 'inputs/e2e-chat/again.jsonl', 'dup-1');
    await putDataset('inputs/e2e-chat/same-content-other-name.jsonl', [{ id: 'a', content: 'once' }]);
    await expect(run('chat', 'inputs/e2e-chat/same-content-other-name.jsonl', 'dup-2')).rejects.toThrow(
      /already taken by run dup-1 \(completed\)/,
    );
  });

  it('lets exactly one of two executions started together on one dataset through', async () => {
    await putDataset(
      'inputs/e2e-chat/race.jsonl',
      Array.from({ length: 5 }, (_, i) => ({ id: `r${i}`, content: 'race' })),
    );
    const outcomes = await Promise.allSettled([
      run('chat', 'inputs/e2e-chat/race.jsonl', 'race-a'),
      run('chat', 'inputs/e2e-chat/race.jsonl', 'race-b'),
    ]);
    expect(outcomes.map((o) => o.status).sort()).toEqual(['fulfilled', 'rejected']);
    const refused = outcomes.find((o) => o.status === 'rejected') as PromiseRejectedResult;
    expect(String(refused.reason)).toMatch(/DuplicateDatasetError|already taken by run race-/);
  });

  it('ends a batch OpenAI fails on validation in errors that give the reason, and completes', async () => {
    const restricted = await startEmulator({
      validationMs: 20,
      requestsPerSecond: 5000,
      finalizingMs: 10,
      tickMs: 10,
      models: ['gpt-4o-mini'],
    });
    try {
      const target = withEmulator(env, restricted);
      await putDataset(
        'inputs/unknown/records.jsonl',
        Array.from({ length: 12 }, (_, i) => ({ id: i, content: `x${i}` })),
      );
      const result = await run('unknown-model', 'inputs/unknown/records.jsonl', 'unknown-1', {}, target);
      expect(result.output).toMatchObject({
        summary: { records: 12, outputs: 0, errors: 12, balanced: true },
      });
      const errors = await jsonl('runs/unknown-1/errors/');
      expect(errors[0]).toMatchObject({
        stage: 'openai',
        code: 'model_not_found',
        message: expect.stringMatching(/is not supported by the Batch API/),
      });
      expect(errors.map((e) => e.line).sort((a, b) => Number(a) - Number(b))).toEqual(
        Array.from({ length: 12 }, (_, i) => i + 1),
      );
      // Each names the dataset object its line is in.
      expect(new Set(errors.map((e) => e.object))).toEqual(new Set(['inputs/unknown/records.jsonl']));
    } finally {
      await restricted.stop();
    }
  });

  it('resubmits the leftovers of an expired batch and completes every record', async () => {
    // 2 requests a second, a 10 s window, on manual time: the first batch expires part-way (on wall time
    // a loaded machine let it expire again and again, until the resubmits ran out), its leftovers go again.
    const time = new ManualTime();
    const slow = await startEmulator(
      time.emulatorOptions({
        validationMs: 1000,
        requestsPerSecond: 2,
        finalizingMs: 10,
        completionWindowMs: 10_000,
        seed: 7,
      }),
    );
    try {
      const target = withEmulator(env, slow);
      await putDataset(
        'inputs/e2e-chat/expiring.jsonl',
        Array.from({ length: 30 }, (_, i) => ({ id: `x${i}`, content: `q${i}` })),
      );
      const result = await run(
        'chat',
        'inputs/e2e-chat/expiring.jsonl',
        'expire-1',
        time.runOptions(target),
        target,
      );
      expect(result.output).toMatchObject({
        summary: { records: 30, outputs: 30, errors: 0, balanced: true },
      });
      const summary = await summaryOf('expire-1');
      expect(summary.batches.resubmissionParts).toBeGreaterThan(0);
      // Resubmission parts keep the shard their records come from (the object their errors would name).
      const parts = await new DynamoRunStore(env.dynamo.client, env.dynamo.table).listParts('expire-1');
      const resent = parts.filter((p) => p.generation > 0);
      expect(resent.length).toBe(summary.batches.resubmissionParts);
      expect(resent.map((p) => p.originShard)).toEqual(resent.map(() => 0));
      expect(parts.filter((p) => p.generation === 0).map((p) => p.originShard)).toEqual([null]);
      expect((await jsonl('runs/expire-1/outputs/')).map((o) => o.id).sort()).toEqual(
        Array.from({ length: 30 }, (_, i) => `x${i}`).sort(),
      );
    } finally {
      await slow.stop();
    }
  });

  it('keeps the finished results of a batch cancelled from outside, and reports the rest', async () => {
    // On manual time: someone cancels the batch between two Ticks once 5 of its 30 requests are done.
    const time = new ManualTime();
    const slow = await startEmulator(
      time.emulatorOptions({
        validationMs: 1000,
        requestsPerSecond: 1,
        finalizingMs: 10,
        cancellingMs: 500,
        seed: 8,
      }),
    );
    try {
      const target = withEmulator(env, slow);
      await putDataset(
        'inputs/e2e-chat/cancel.jsonl',
        Array.from({ length: 30 }, (_, i) => ({ id: `k${i}`, content: `q${i}` })),
      );
      const client = new OpenAI({ apiKey: 'sk-local', baseURL: slow.url });
      let cancelled = false;
      const result = await run(
        'chat',
        'inputs/e2e-chat/cancel.jsonl',
        'cancel-1',
        time.runOptions(
          target,
          {},
          {
            afterTick: async () => {
              if (cancelled) return;
              await slow.settle();
              const batch = (await client.batches.list({ limit: 1 })).data[0];
              if (batch?.status === 'in_progress' && (batch.request_counts?.completed ?? 0) >= 5) {
                await client.batches.cancel(batch.id);
                cancelled = true;
              }
            },
          },
        ),
        target,
      );
      expect(cancelled).toBe(true);
      const summary = await summaryOf('cancel-1');
      expect(summary.reconciliation.balanced).toBe(true);
      expect(summary.counts.outputs).toBeGreaterThanOrEqual(5);
      expect(summary.counts.outputs).toBeLessThan(30);
      const errors = await jsonl('runs/cancel-1/errors/');
      expect(errors.length).toBe(30 - summary.counts.outputs);
      expect(new Set(errors.map((e) => e.code))).toEqual(new Set(['batch_cancelled']));
      expect(result.output).toMatchObject({ summary: { balanced: true } });
    } finally {
      await slow.stop();
    }
  });

  it('never creates a batch twice when the answer to an upload or a create is lost', async () => {
    const flaky = await startEmulator({
      validationMs: 10,
      requestsPerSecond: 5000,
      finalizingMs: 10,
      tickMs: 10,
    });
    try {
      const target = withEmulator(env, flaky);
      flaky.faults.next('drop_after', { method: 'POST', path: /\/files$/ }); // stored, answer lost
      flaky.faults.next('drop_after', { method: 'POST', path: /\/batches$/ }); // created, answer lost
      flaky.faults.next('error_after', { method: 'POST', path: /\/batches$/ }); // created, answered 500
      flaky.faults.next('drop_before', { method: 'POST', path: /\/batches$/ }); // never created
      await putDataset(
        'inputs/e2e-chat/flaky.jsonl',
        Array.from({ length: 100 }, (_, i) => ({ id: `f${i}`, content: `q${i}` })),
      );
      const result = await run(
        'chat',
        'inputs/e2e-chat/flaky.jsonl',
        'flaky-1',
        { lostCreateGraceMs: 200 },
        target,
      );
      expect(result.output).toMatchObject({
        summary: { records: 100, outputs: 100, errors: 0, balanced: true },
      });
      const client = new OpenAI({ apiKey: 'sk-local', baseURL: flaky.url, maxRetries: 0 });
      const made: string[] = [];
      for await (const batch of client.batches.list())
        made.push(`${batch.metadata?.part}/${batch.metadata?.attempt}`);
      expect(made.length).toBe(flaky.engine.created);
      expect(new Set(made).size).toBe(made.length); // one batch per part and attempt
      expect(made.length).toBe(3); // three parts, the create that never happened not counted
      expect(Object.values(flaky.faults.injected).reduce((a, b) => a + b, 0)).toBe(4);
    } finally {
      await flaky.stop();
    }
  });

  it('stops a run whose estimated cost is above maxCostUsd before anything reaches OpenAI, and releases its dataset', async () => {
    const { loaded, definition } = await work('chat');
    const capped = {
      ...loaded,
      work: { ...loaded.work, settings: { ...loaded.work.settings, maxCostUsd: 0.000001 } },
    };
    await putDataset(
      'inputs/e2e-chat/costly.jsonl',
      Array.from({ length: 20 }, (_, i) => ({ id: `m${i}`, content: 'word '.repeat(50) })),
    );
    const before = env.emulator?.engine.created ?? 0;
    const failure = await runLocally(
      env,
      capped,
      'inputs/e2e-chat/costly.jsonl',
      'costly-1',
      { waitMs: 20 },
      { definition },
    ).catch((e: unknown) => e);
    expect(String(failure)).toMatch(
      /estimated cost of this run is \$0\.001302 \(1360 input tokens and 200 output tokens a request at batch prices\), above the work's maxCostUsd of \$0\.000001000\. Nothing was sent to OpenAI\./,
    );
    expect(env.emulator?.engine.created).toBe(before);
    // The failed run released its dataset: the same content runs under the normal work.
    const again = await run('chat', 'inputs/e2e-chat/costly.jsonl', 'costly-2');
    expect(again.output).toMatchObject({ summary: { outputs: 20, balanced: true } });
  });

  it('continues a long run in new executions before the history limit, and completes it', async () => {
    // On wall time this run raced the emulator: when the first Ticks were slow (a cold start, a loaded
    // machine) both batches had finished by the second Tick and the run ended in one execution. On manual
    // time it takes the same Ticks every time: submit, see the batches in progress, collect, ...
    const time = new ManualTime();
    const emulator = await startEmulator(
      time.emulatorOptions({ validationMs: 1000, requestsPerSecond: 20, finalizingMs: 1000, seed: 42 }),
    );
    try {
      const target = withEmulator(env, emulator);
      await putDataset(
        'inputs/e2e-chat/long.jsonl',
        Array.from({ length: 80 }, (_, i) => ({ id: `l${i}`, content: `q${i}` })),
      );
      const result = await run(
        'chat',
        'inputs/e2e-chat/long.jsonl',
        'long-1',
        time.runOptions(target, { maxTicksPerExecution: 2 }),
        target,
      );
      expect(time.ticks).toBeGreaterThan(2); // the run is longer than one execution's ticks
      expect(result.executions).toBeGreaterThan(1);
      expect((await summaryOf('long-1')).counts).toMatchObject({ records: 80, outputs: 80 });
    } finally {
      await emulator.stop();
    }
  });

  it('carries ids and counts in the state, never records: its size does not grow with the dataset', async () => {
    const largest = async (records: number, runId: string) => {
      await putDataset(
        `inputs/e2e-chat/${runId}.jsonl`,
        Array.from({ length: records }, (_, i) => ({
          id: `${runId}-${i}`,
          content: `a question of some length, number ${i}`,
        })),
      );
      let max = 0;
      let states = 0;
      await run('chat', `inputs/e2e-chat/${runId}.jsonl`, runId, {
        onOutput: (_, output) => {
          states += 1;
          max = Math.max(max, Buffer.byteLength(JSON.stringify(output)));
        },
      });
      await new Promise((r) => setTimeout(r, 50)); // the event log drains after the result
      expect(states).toBeGreaterThan(5);
      return max;
    };
    const small = await largest(5, 'payload-small');
    const large = await largest(300, 'payload-large');
    expect(large).toBeLessThan(2048); // far below Step Functions' 256 KiB
    expect(Math.abs(large - small)).toBeLessThan(64); // only longer ids and counts
  });

  it('prepares a dataset over several steps when the time budget runs out, losing nothing', async () => {
    await putDataset(
      'inputs/e2e-chat/steps.jsonl',
      Array.from({ length: 90 }, (_, i) => ({ id: `s${i}`, content: `q${i}` })),
    );
    // The steps' clock moves a millisecond at each reading, so that a step's 5 ms budget ends after a
    // few records whatever the machine's load (a wall clock made this test slow, and its steps vary).
    let clock = Date.now();
    let prepareSteps = 0;
    const result = await run('chat', 'inputs/e2e-chat/steps.jsonl', 'steps-1', {
      budgetMs: 5,
      now: () => (clock += 1),
      wrap: {
        handlers: (handlers) => ({
          ...handlers,
          Prepare: async (event: unknown) => {
            prepareSteps += 1;
            return handlers.Prepare(event);
          },
        }),
      },
    });
    expect(result.output).toMatchObject({ summary: { records: 90, outputs: 90, balanced: true } });
    expect(prepareSteps).toBeGreaterThan(10);
  });
});
