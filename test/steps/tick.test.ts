import OpenAI, { toFile } from 'openai';
import { beforeAll, describe, expect, it } from 'vitest';
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
