import { PutObjectCommand } from '@aws-sdk/client-s3';
import OpenAI, { toFile } from 'openai';
import { beforeAll, describe, expect, it } from 'vitest';
import { runKeys } from '../../functions/core/run';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import { tick } from '../../functions/steps/tick';
import { localDeps, RecordingNotifier } from '../../local/runner';
import { localEnvironment } from '../support/local-environment';
import { partFixture, runFixture } from '../support/runs';

const work = defineWork({ name: 'tick', model: 'gpt-4o-mini', minPollSeconds: 10, maxPollSeconds: 900 });
const shared = localEnvironment('openai-batch-tick-', {
  kind: 'emulator',
  options: { validationMs: 3_600_000, tickMs: 0 },
});
let deps: StepDeps<unknown>;

/** A run whose one part is a batch the emulator keeps validating: every Tick polls it, nothing moves. */
async function runWithBatch(runId: string): Promise<void> {
  const client = new OpenAI({ apiKey: shared.env.openai.apiKey, baseURL: shared.env.openai.baseURL });
  const line = JSON.stringify({
    custom_id: 'a',
    method: 'POST',
    url: '/v1/chat/completions',
    body: { model: 'gpt-4o-mini', messages: [] },
  });
  const file = await client.files.create({
    file: await toFile(Buffer.from(`${line}\n`), 'a.jsonl'),
    purpose: 'batch',
  });
  const batch = await client.batches.create({
    input_file_id: file.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  });
  await deps.runs.createRun(
    { ...runFixture(runId), status: 'running', prepared: true, execution: 'first' },
    false,
  );
  const part = partFixture();
  await deps.runs.addParts(runId, [
    { ...part, status: 'active', batchId: batch.id, fileId: file.id, batchStatus: 'validating' },
  ]);
}

beforeAll(async () => {
  deps = localDeps(shared.env, work, {}, new RecordingNotifier()) as StepDeps<unknown>;
});

describe('Tick and the execution that runs it', () => {
  it('says it is waiting as it ends, so that a webhook may replace its execution', async () => {
    await runWithBatch('w1');
    const ticked = await tick(deps, { runId: 'w1', executionName: 'first' });
    expect(ticked).toMatchObject({ done: false, superseded: false });
    expect((await deps.runs.getRun('w1'))?.waiting).toBe('first');
  });

  it('comes back after a second when a webhook came while it ran, and after its own backoff otherwise', async () => {
    await runWithBatch('w2');
    const long = async (wakePending: boolean) => {
      const run = await deps.runs.getRun('w2');
      if (!run) throw new Error('no run');
      await deps.runs.putRun({ ...run, waitSeconds: 400, wakePending });
      return tick(deps, { runId: 'w2', executionName: 'first' });
    };
    expect((await long(false)).waitSeconds).toBe(800); // nothing moved: the backoff doubles
    expect((await long(true)).waitSeconds).toBe(1); // the webhook's news: back at once, whatever minPollSeconds
    expect((await deps.runs.getRun('w2'))?.wakePending).toBe(false);
  });

  it('ends an execution that another one replaced, touching nothing', async () => {
    await runWithBatch('w3');
    const run = await deps.runs.getRun('w3');
    if (!run) throw new Error('no run');
    await deps.runs.putRun({ ...run, execution: 'second', waiting: 'second' });
    const before = await deps.runs.getRun('w3');
    expect(await tick(deps, { runId: 'w3', executionName: 'first' })).toMatchObject({ superseded: true });
    expect(await deps.runs.getRun('w3')).toEqual(before);
    // The execution that drives the run ticks as usual, and clears `waiting` as it starts.
    expect(await tick(deps, { runId: 'w3', executionName: 'second' })).toMatchObject({ superseded: false });
  });

  it('leaves the wake to the execution that replaced it while it ran', async () => {
    await runWithBatch('w4');
    // While this Tick runs, a webhook starts a new execution and, finding it busy, marks a wake for it.
    const racing: StepDeps<unknown> = {
      ...deps,
      runs: new Proxy(deps.runs, {
        get: (store, property, receiver) => {
          if (property !== 'listParts') return Reflect.get(store, property, receiver);
          return async (runId: string) => {
            const run = await store.getRun(runId);
            if (run) await store.putRun({ ...run, execution: 'second', wakePending: true });
            return store.listParts(runId);
          };
        },
      }),
    };
    await tick(racing, { runId: 'w4', executionName: 'first' });
    expect(await deps.runs.getRun('w4')).toMatchObject({
      execution: 'second',
      wakePending: true,
      waiting: null,
    });
  });
});

describe('Tick and held parts', () => {
  it('never sends a part Settle still holds, and sends it once released', async () => {
    const runId = 'held';
    const keys = runKeys(runId);
    const request = (id: string) =>
      JSON.stringify({
        custom_id: id,
        method: 'POST',
        url: '/v1/chat/completions',
        body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] },
      });
    for (const [key, body] of [
      [keys.requests(0), `${request('a')}\n`],
      [keys.lines(0), '1\n'],
      [keys.requests(1), `${request('b')}\n`],
      [keys.lines(1), '2\n'],
    ] as const)
      await shared.env.s3.client.send(
        new PutObjectCommand({ Bucket: shared.env.s3.bucket, Key: key, Body: body }),
      );
    await deps.runs.createRun(
      { ...runFixture(runId), status: 'running', prepared: true, execution: 'first' },
      false,
    );
    await deps.runs.addParts(runId, [
      { ...partFixture({ part: 0 }), held: true },
      { ...partFixture({ part: 1 }), held: false },
    ]);
    const uploads: string[] = [];
    const recording: StepDeps<unknown> = {
      ...deps,
      openai: async () => {
        const api = await deps.openai();
        return new Proxy(api, {
          get: (target, property, receiver) => {
            const value = Reflect.get(target, property, receiver);
            if (property !== 'uploadFile' || typeof value !== 'function') return value;
            return (name: string, ...rest: unknown[]) => {
              uploads.push(name);
              return value.call(target, name, ...rest);
            };
          },
        });
      },
    };

    const ticked = await tick(recording, { runId, executionName: 'first' });
    expect(ticked.done).toBe(false);
    let parts = new Map((await deps.runs.listParts(runId)).map((p) => [p.part, p]));
    expect(parts.get(0)).toMatchObject({ status: 'pending', attempt: 0, fileId: null, held: true });
    expect(parts.get(1)).toMatchObject({ status: 'active', attempt: 1 });
    expect(uploads).toEqual([`${runId}.part-00001.jsonl`]);

    // A held part alone does not make Tick come back at once: it is not work Tick could do.
    const again = await tick(recording, { runId, executionName: 'first' });
    expect(again.waitSeconds).toBeGreaterThan(1);
    expect(uploads).toHaveLength(1);
    expect((await deps.runs.listParts(runId)).find((p) => p.part === 0)?.status).toBe('pending');

    // Settle released it: the next Tick sends it.
    const held = parts.get(0);
    if (!held) throw new Error('no part 0');
    await deps.runs.putPart(runId, { ...held, held: false });
    await tick(recording, { runId, executionName: 'first' });
    parts = new Map((await deps.runs.listParts(runId)).map((p) => [p.part, p]));
    expect(parts.get(0)).toMatchObject({ status: 'active', attempt: 1, held: false });
    expect(uploads).toEqual([`${runId}.part-00001.jsonl`, `${runId}.part-00000.jsonl`]);
  });
});
