import { describe, expect, it } from 'vitest';
import { InvariantError } from '../../functions/core/errors';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import { tick } from '../../functions/steps/tick';
import { localDeps, RecordingNotifier } from '../../local/runner';
import { localEnvironment } from '../support/local-environment';
import { partFixture, runFixture } from '../support/runs';

const shared = localEnvironment('openai-batch-submit-unreadable-', { kind: 'emulator', options: {} });

describe('submitting a part whose request file cannot be read', () => {
  it('fails the run naming the file, rather than wait on OpenAI for ever', async () => {
    const now = 1_800_000_000_000;
    const work = defineWork({ name: 'unreadable', model: 'gpt-4o-mini' });
    const deps = localDeps(
      shared.env,
      work,
      { now: () => now },
      new RecordingNotifier(),
    ) as StepDeps<unknown>;
    await deps.runs.createRun(
      { ...runFixture('unreadable-1', 'h', now), status: 'running', prepared: true, execution: 'e' },
      false,
    );
    // A part whose request file is not in the bucket (removed by hand, or by a rule that should not).
    await deps.runs.addParts('unreadable-1', [partFixture()]);
    const failed = tick(deps, { runId: 'unreadable-1', executionName: 'e' });
    await expect(failed).rejects.toBeInstanceOf(InvariantError);
    await expect(failed).rejects.toThrow(
      /the request file s3:\/\/[^/]+\/runs\/unreadable-1\/requests\/part-00000\.jsonl of part 0 cannot be read: /,
    );
    const blocked = (await deps.runs.getRun('unreadable-1'))?.blocked ?? null;
    expect(blocked).toBeNull();
  });
});
