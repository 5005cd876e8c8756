import { describe, expect, it } from 'vitest';
import { OpenAIUnavailableError } from '../../functions/core/errors';
import type { BatchApi } from '../../functions/core/ports';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import { cleanUp, DELETES_IN_FLIGHT, partsNamed } from '../../functions/steps/finish';
import { localDeps, RecordingNotifier } from '../../local/runner';
import { localEnvironment } from '../support/local-environment';
import { partFixture, runFixture } from '../support/runs';

/**
 * CleanUp over a run of many parts, through the real stand-ins and the emulator. Each file delete is the
 * emulator's, wrapped to take 150 ms of a manual clock and to count the deletes in flight: no stand-in
 * can be told how long OpenAI takes to answer.
 */

const shared = localEnvironment('openai-batch-cleanup-', { kind: 'emulator', options: {} });

const DELETE_MS = 150;
const BUDGET_MS = 6_000;

async function runOfParts(runId: string, parts: number, refuse: ReadonlySet<string> = new Set()) {
  const clock = { now: 1_000_000 };
  const work = defineWork({ name: 'tidy', model: 'gpt-4o-mini', cleanUp: true });
  const base = localDeps(
    shared.env,
    work,
    { now: () => clock.now, budgetMs: BUDGET_MS },
    new RecordingNotifier(),
  ) as StepDeps<Record<string, unknown>>;
  const real = await base.openai();
  let inFlight = 0;
  const seen = { most: 0, deleted: new Set<string>() };
  const api: BatchApi = {
    ...real,
    filesNamed: (prefix) => real.filesNamed(prefix),
    deleteFile: async (id) => {
      if (refuse.has(id)) throw new OpenAIUnavailableError('429 rate limit', 'openai_unavailable');
      inFlight += 1;
      seen.most = Math.max(seen.most, inFlight);
      await new Promise((resolve) => setImmediate(resolve));
      clock.now += DELETE_MS / Math.max(1, inFlight); // deletes in flight share the wait
      await real.deleteFile(id); // not one of the emulator's: answered 404, which is no error
      seen.deleted.add(id);
      inFlight -= 1;
    },
  };
  const deps = { ...base, openai: async () => api };
  await deps.runs.createRun({ ...runFixture(runId), status: 'completed', prepared: true }, false);
  await deps.runs.addParts(
    runId,
    Array.from({ length: parts }, (_, part) => ({
      ...partFixture({ part }),
      status: 'done' as const,
      fileId: `file-in-${part}`,
      outputFileId: `file-out-${part}`,
      errorFileId: part % 2 === 0 ? `file-err-${part}` : null,
    })),
  );
  return { deps, seen, clock };
}

describe('CleanUp', () => {
  it(`deletes a run's OpenAI files ${DELETES_IN_FLIGHT} at a time, every one of them`, async () => {
    const { deps, seen } = await runOfParts('tidy-1', 60);
    const result = await cleanUp(deps, { runId: 'tidy-1' });
    expect(result).toMatchObject({ openaiFiles: 150, leftOnOpenAI: 0 });
    expect(seen.deleted.size).toBe(150);
    expect(seen.most).toBe(DELETES_IN_FLIGHT);
  });

  it('counts the files whose delete OpenAI refused as left, and ends, instead of failing the run', async () => {
    const refused = new Set(['file-out-3', 'file-in-7']);
    const { deps, seen } = await runOfParts('tidy-3', 20, refused);
    const result = await cleanUp(deps, { runId: 'tidy-3' });
    expect(result).toMatchObject({ openaiFiles: 48, leftOnOpenAI: 2 });
    expect(seen.deleted.size).toBe(48);
    expect([...refused].some((id) => seen.deleted.has(id))).toBe(false);
  });

  it("leaves the files and ends, instead of failing a completed run's execution, when OpenAI is down or refuses the key", async () => {
    const down = new OpenAIUnavailableError('OpenAI is unavailable: 503', 'openai_unavailable');
    // The key refused as the API is built: nothing deleted, every file the parts name left.
    const { deps } = await runOfParts('tidy-4', 5);
    const refusedKey = {
      ...deps,
      openai: async () => {
        throw new OpenAIUnavailableError('OpenAI refused the API key: 401', 'key_refused');
      },
    };
    expect(await cleanUp(refusedKey, { runId: 'tidy-4' })).toMatchObject({
      openaiFiles: 0,
      leftOnOpenAI: 13,
    });
    // The listing of the run's files fails: those the parts name are still deleted.
    const { deps: listing, seen } = await runOfParts('tidy-5', 5);
    const api = await listing.openai();
    const unlisted = {
      ...listing,
      openai: async () => ({
        ...api,
        filesNamed: async () => {
          throw down;
        },
      }),
    };
    expect(await cleanUp(unlisted, { runId: 'tidy-5' })).toMatchObject({ openaiFiles: 13, leftOnOpenAI: 0 });
    expect(seen.deleted.size).toBe(13);
  });

  it('stops starting deletes at half its time budget, saying how many files it left, instead of failing the run', async () => {
    // 400 parts, 1,000 files: at 150 ms a delete, 16 at a time, about 9.4 s of the clock, over a 6 s budget.
    const { deps, seen, clock } = await runOfParts('tidy-2', 400);
    const started = clock.now;
    const result = await cleanUp(deps, { runId: 'tidy-2' });
    expect(result.leftOnOpenAI).toBeGreaterThan(0);
    expect(result.openaiFiles + result.leftOnOpenAI).toBe(1_000);
    expect(result.openaiFiles).toBe(seen.deleted.size);
    // No delete starts past half the budget: the last ones end within one delete of it.
    expect(clock.now - started).toBeLessThanOrEqual(BUDGET_MS / 2 + DELETE_MS);
  });
});

describe('partsNamed', () => {
  it('names at most ten parts of a run, and how many more, so that a message stays short', () => {
    expect(partsNamed([7])).toBe('part 7 is');
    expect(partsNamed([1, 2])).toBe('parts 1, 2 are');
    const many = Array.from({ length: 100_000 }, (_, i) => 100_000 + i);
    const named = partsNamed(many);
    expect(named).toBe(
      'parts 100000, 100001, 100002, 100003, 100004, 100005, 100006, 100007, 100008, 100009 and 99990 more are',
    );
  });
});
