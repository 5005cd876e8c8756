import { describe, expect, it } from 'vitest';
import type { BatchApi, CreateBatchInput } from '../../functions/core/ports';
import type { BatchView } from '../../functions/core/reconciler';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import { tick } from '../../functions/steps/tick';
import { localDeps, RecordingNotifier } from '../../local/runner';
import { localEnvironment } from '../support/local-environment';
import { partFixture, runFixture } from '../support/runs';

const shared = localEnvironment('openai-batch-unknown-status-', { kind: 'emulator', options: {} });

describe('a batch whose status Tick does not know', () => {
  it('is polled, not taken for a lost create and paid for again', async () => {
    // A stand-in OpenAI that answers a status of its own (the emulator answers only OpenAI's): no
    // stand-in can, so this one is a fake, for the Batch API alone.
    let now = 1_800_000_000_000;
    const created: BatchView[] = [];
    const api: BatchApi = {
      uploadFile: async () => 'file_1',
      createBatch: async (input: CreateBatchInput) => {
        const view: BatchView = {
          id: `batch_${created.length + 1}`,
          status: 'queued',
          total: 1,
          completed: 0,
          failed: 0,
          outputFileId: null,
          errorFileId: null,
          errors: [],
          metadata: input.metadata,
          createdAt: Math.floor(now / 1000),
        };
        created.push(view);
        return view;
      },
      getBatch: async (id) => {
        const found = created.find((b) => b.id === id);
        if (!found) throw new Error(`no batch ${id}`);
        return found;
      },
      recentBatches: async (since) => created.filter((b) => b.createdAt >= since).reverse(),
      cancelBatch: async (id) => {
        const found = created.find((b) => b.id === id);
        if (!found) throw new Error(`no batch ${id}`);
        return found;
      },
      fileContent: async function* () {},
      deleteFile: async () => {},
      filesNamed: async () => [],
    };
    const work = defineWork({
      name: 'unknown',
      model: 'gpt-4o-mini',
      minPollSeconds: 30,
      maxPollSeconds: 900,
    });
    const base = localDeps(
      shared.env,
      work,
      { now: () => now },
      new RecordingNotifier(),
    ) as StepDeps<unknown>;
    const deps: StepDeps<unknown> = { ...base, openai: async () => api, lostCreateGraceMs: 120_000 };
    await deps.runs.createRun(
      { ...runFixture('unknown-1', 'h', now), status: 'running', prepared: true, execution: 'e' },
      false,
    );
    await deps.runs.addParts('unknown-1', [partFixture()]);
    // Ten ticks over more than the lost-create grace: one batch, polled.
    for (let i = 0; i < 10; i++) {
      const next = await tick(deps, { runId: 'unknown-1', executionName: 'e' });
      now += Math.max(30, next.waitSeconds) * 1000;
    }
    expect(created.map((b) => b.id)).toEqual(['batch_1']);
    const [part] = await deps.runs.listParts('unknown-1');
    expect(part).toMatchObject({ status: 'active', batchId: 'batch_1', batchStatus: 'queued', attempt: 1 });
  });
});
