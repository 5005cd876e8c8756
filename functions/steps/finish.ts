import { InvariantError, messageOf } from '../core/errors';
import { forEachLimit } from '../core/limit';
import type { BatchApi } from '../core/ports';
import { runKeys } from '../core/run';
import { type RunSummary, summarize } from '../core/summary';
import type { StepDeps } from './deps';
import { intermediatePrefixes, markIntermediatesEnded } from './intermediates';
import { runOf } from './runs';
import { writeAll } from './storage';

/** What Finalize answers: the summary's key and the counts a user watches. */
export interface Finalized {
  readonly summaryKey: string;
  readonly records: number;
  readonly outputs: number;
  readonly errors: number;
  readonly balanced: boolean;
}

/**
 * Writes `runs/<runId>/summary.json` (counts per stage, usage, cost, timings, reconciliation) and marks
 * the run completed; a completed run keeps its dataset claim. Without `cleanUp`, marks the run's
 * intermediate objects ended, for the lifecycle rule to expire (with it, CleanUp deletes them next).
 */
export async function finalize<R>(deps: StepDeps<R>, input: { runId: string }): Promise<Finalized> {
  let run = await runOf(deps.runs, input.runId);
  const parts = await deps.runs.listParts(run.runId);
  const unfinished = parts.filter((p) => p.status !== 'done');
  if (!run.prepared || unfinished.length > 0) {
    throw new InvariantError(
      `run ${run.runId} cannot be finalized: ${run.prepared ? `${partsNamed(unfinished.map((p) => p.part))} not done` : 'it is not prepared'}`,
    );
  }
  const status = run.cancelRequested ? 'cancelled' : 'completed';
  run = await deps.runs.putRun({ ...run, status, updatedAt: deps.now() });
  const summary: RunSummary = summarize(run, parts, deps.now());
  const summaryKey = runKeys(run.runId).summary;
  await writeAll(deps.blobs, summaryKey, `${JSON.stringify(summary, null, 2)}\n`);
  // A completed run keeps its dataset; a cancelled one releases it for another run.
  await deps.runs.settleClaim(run.work, run.datasetHash, run.runId, status);
  deps.log('run finalized', {
    runId: run.runId,
    ...summary.counts,
    balanced: summary.reconciliation.balanced,
  });
  if (!deps.work.settings.cleanUp) await markIntermediatesEnded(deps, run.runId);
  return {
    summaryKey,
    records: summary.counts.records,
    outputs: summary.counts.outputs,
    errors: summary.counts.errors,
    balanced: summary.reconciliation.balanced,
  };
}

/** Parts named in a message: the first ten, and how many more (a run may have thousands). */
export function partsNamed(parts: readonly number[]): string {
  const shown = parts.slice(0, 10).join(', ');
  const more = parts.length - 10;
  return `${parts.length === 1 ? 'part' : 'parts'} ${shown}${more > 0 ? ` and ${more} more` : ''} ${parts.length === 1 ? 'is' : 'are'}`;
}

/**
 * With the work's `cleanUp`, deletes what the run left on OpenAI (input, output and error files, and any
 * upload whose answer was lost, found by its name) and its intermediate objects in S3 (request files and
 * state). Outputs, errors and the summary stay. OpenAI's files go {@link DELETES_IN_FLIGHT} at a time,
 * none started past half the step's budget; any left then, or whose delete OpenAI refused, are counted in
 * `leftOnOpenAI` and logged, and the run ends as it would have.
 */
export async function cleanUp<R>(
  deps: StepDeps<R>,
  input: { runId: string },
): Promise<{ openaiFiles: number; objects: number; leftOnOpenAI: number }> {
  if (!deps.work.settings.cleanUp) return { openaiFiles: 0, objects: 0, leftOnOpenAI: 0 };
  const begun = deps.now();
  const run = await runOf(deps.runs, input.runId);
  // S3 first: what is left there after a failure (OpenAI unreachable) is marked ended by MarkFailed.
  let objects = 0;
  for (const prefix of intermediatePrefixes(run.runId)) {
    const batch: string[] = [];
    for await (const object of deps.blobs.list(prefix)) {
      batch.push(object.key);
      if (batch.length === 1000) {
        await deps.blobs.delete(batch.splice(0));
        objects += 1000;
      }
    }
    objects += batch.length;
    await deps.blobs.delete(batch);
  }
  const parts = await deps.runs.listParts(run.runId);
  const fileIds = new Set<string>();
  for (const part of parts)
    for (const id of [part.fileId, part.outputFileId, part.errorFileId]) if (id) fileIds.add(id);
  let openaiFiles = 0;
  let leftOnOpenAI = 0;
  // The run has completed: OpenAI down, or the key refused, leaves its files there (said and counted), and
  // does not fail the execution, whose Notify would then never say the run completed.
  let reached = true;
  let stoppedByBudget = false;
  const unreachable = (what: string, caught: unknown) => {
    reached = false;
    deps.log(`OpenAI could not be reached to ${what}`, { runId: run.runId, error: messageOf(caught) });
  };
  let api: BatchApi | null = null;
  if (fileIds.size > 0 || parts.length > 0) {
    try {
      api = await deps.openai();
    } catch (caught) {
      unreachable("delete the run's files", caught);
      leftOnOpenAI = fileIds.size;
    }
  }
  if (api) {
    try {
      for (const id of await api.filesNamed(`${run.runId}.`)) fileIds.add(id);
    } catch (caught) {
      unreachable("list the run's files (those the parts name are deleted)", caught);
    }
    // A few at a time (a run of 10,000 parts has over 20,000 files), none started past half the budget
    // (each under way may take two calls' timeouts more). The run has completed: a file left, by the
    // budget or by OpenAI refusing its delete (429, 5xx after the adapter's retry), is counted and said,
    // not retried into a failed execution.
    const ids = [...fileIds];
    let refused: unknown = null;
    const deleting = api;
    const started = await forEachLimit(
      ids,
      DELETES_IN_FLIGHT,
      async (id) => {
        try {
          await deleting.deleteFile(id);
          openaiFiles += 1;
        } catch (caught) {
          refused ??= caught;
        }
      },
      () => deps.now() - begun <= deps.budgetMs / 2,
    );
    leftOnOpenAI = ids.length - openaiFiles;
    stoppedByBudget = started < ids.length;
    if (refused)
      deps.log('OpenAI refused some deletes', {
        runId: run.runId,
        failed: started - openaiFiles,
        first: messageOf(refused),
      });
  }
  if (leftOnOpenAI > 0)
    deps.log(
      reached && stoppedByBudget
        ? 'clean-up stopped at its time budget: files are left on OpenAI'
        : 'files are left on OpenAI',
      {
        runId: run.runId,
        openaiFiles,
        leftOnOpenAI,
        objects,
      },
    );
  else deps.log('cleaned up', { runId: run.runId, openaiFiles, objects });
  return { openaiFiles, objects, leftOnOpenAI };
}

/** OpenAI file deletes CleanUp has in flight at once. */
export const DELETES_IN_FLIGHT = 16;

/** Announces the run's end. */
export async function notifyRun<R>(
  deps: StepDeps<R>,
  input: { runId: string },
): Promise<{ notified: boolean }> {
  const run = await runOf(deps.runs, input.runId);
  const failed = run.status === 'failed';
  await deps.notifier.notify(failed ? 'Run Failed' : 'Run Completed', {
    runId: run.runId,
    work: run.work,
    status: run.status,
    summary: failed ? null : `s3://${run.bucket}/${runKeys(run.runId).summary}`,
    outputs: `s3://${run.bucket}/${runKeys(run.runId).prefix}outputs/`,
    errors: `s3://${run.bucket}/${runKeys(run.runId).prefix}errors/`,
    error: run.error,
  });
  return { notified: true };
}

export { causeMessage, markFailed } from './fail';
