import { messageOf, type OpenAIUnavailableError } from '../core/errors';
import type { Part, Run } from '../core/run';
import type { StepDeps } from './deps';
import { markIntermediatesEnded } from './intermediates';
import { updateRun } from './runs';
import {
  blockedAfter,
  cancelActive,
  collectFinished,
  type Pass,
  pollActive,
  recoverLostCreates,
  whileOpenAIAnswers,
} from './tick';

/**
 * How long (ms) a failing run waits for OpenAI to finish cancelling its batches, so that their partial
 * results are collected, before it is marked failed anyway (a resume collects what is left).
 */
export const WIND_DOWN_MS = 30 * 60_000;

/** Calls in a row whose wind-down stops on an error (not OpenAI's) before the run is marked failed as it is. */
export const MAX_WIND_DOWN_STALLS = 3;

/** What MarkFailed answers: the error for the execution's Fail state, and whether to come back. */
export interface MarkedFailed {
  readonly error: string;
  readonly cause: string;
  /** True once the run is marked failed (or there was nothing to mark); else MarkFailed runs again. */
  readonly settled: boolean;
  readonly waitSeconds: number;
  /** A resumed execution drives the run now: this one ends without failing. */
  readonly superseded: boolean;
}

/** Parts that still have something on OpenAI to cancel, find or collect. */
function unsettled(parts: Iterable<Part>): Part[] {
  return [...parts].filter(
    (p) => p.status === 'submitting' || p.status === 'active' || p.status === 'collecting',
  );
}

/**
 * Winds a run down after a step failed for good, then marks it failed. Each call: finds the batches of
 * creates whose answer was lost, asks OpenAI to cancel every batch in flight, and collects every batch
 * that finished (completed, cancelled or expired) into outputs and errors; requests OpenAI did not
 * answer go to new pending parts, never to errors, so that nothing OpenAI finished is discarded and a
 * resumed run sends the rest. While batches are still cancelling (OpenAI takes up to 10 minutes) it asks
 * to be called again; after {@link WIND_DOWN_MS}, or once nothing is on OpenAI, it marks the run failed,
 * releases its dataset and announces the failure. A run that never got registered has nothing to mark.
 */
export async function markFailed<R>(
  deps: StepDeps<R>,
  input: { runId: string | null; error: string; cause: string; executionName?: string | undefined },
): Promise<MarkedFailed> {
  const message = causeMessage(input.cause);
  const result = (settled: boolean, waitSeconds = 0, superseded = false): MarkedFailed => ({
    error: input.error,
    cause: message,
    settled,
    waitSeconds,
    superseded,
  });
  const run = input.runId ? await deps.runs.getRun(input.runId) : null;
  if (!run || run.status === 'completed' || run.status === 'cancelled' || run.status === 'failed') {
    // An ended run (a CleanUp that failed midway, a MarkFailed run again): what it left expires.
    if (run) await markIntermediatesEnded(deps, run.runId);
    deps.log('run failed', { runId: input.runId, error: input.error, message });
    return result(true);
  }
  /** True while this execution still drives the run (a resume may have taken it over meanwhile). */
  const drives = (r: Run) => input.executionName === undefined || r.execution === input.executionName;
  const superseded = () => {
    deps.log('failed execution superseded: another execution drives the run', { runId: run.runId });
    return result(true, 0, true);
  };
  if (!drives(run)) return superseded();
  const started = deps.now();
  const failure = `${input.error}: ${message}`;
  // First call: say the run is failing, and stop a webhook from restarting it.
  let failing = await updateRun(deps.runs, run.runId, (r) =>
    r.failing || !drives(r)
      ? r
      : { ...r, failing: { error: failure, since: started, stalls: 0 }, waiting: null, updatedAt: started },
  );
  if (!drives(failing)) return superseded();
  const parts = new Map((await deps.runs.listParts(failing.runId)).map((p) => [p.part, p]));
  let blocked: OpenAIUnavailableError | null = null;
  let stopped: string | null = null;
  if (unsettled(parts.values()).length > 0) {
    const save = async (part: Part): Promise<Part | null> => {
      const saved = await deps.runs.putPart(failing.runId, part);
      if (saved) parts.set(saved.part, saved);
      return saved;
    };
    try {
      blocked = await whileOpenAIAnswers(
        deps,
        failing.runId,
        'a failing run cannot reach OpenAI; it tries again',
        async () => {
          const pass: Pass<R> = {
            deps,
            api: await deps.openai(),
            run: failing,
            parts,
            started,
            outOfTime: () => deps.now() - started > deps.budgetMs,
            save,
          };
          await recoverLostCreates(pass);
          await cancelActive(pass);
          await pollActive(pass);
          // Leftovers are kept for a resume whatever the resubmits used: they failed with the run.
          await collectFinished(pass, () => true, { resendCancelled: true });
          failing = pass.run;
        },
      );
    } catch (caught) {
      // Winding down is a courtesy: an error that is not OpenAI's is tried again at the next call, and
      // after a few in a row the run is marked failed as it is (a resume goes on from there).
      stopped = messageOf(caught);
    }
  }
  const left = unsettled(parts.values());
  const since = failing.failing?.since ?? started;
  const stalls = stopped === null ? 0 : (failing.failing?.stalls ?? 0) + 1;
  if (stopped !== null)
    deps.log('winding the failing run down stopped on an error', {
      runId: failing.runId,
      error: stopped,
      stalls,
      giveUp: stalls >= MAX_WIND_DOWN_STALLS,
    });
  if (left.length > 0 && stalls < MAX_WIND_DOWN_STALLS && deps.now() - since < WIND_DOWN_MS) {
    const now = deps.now();
    await updateRun(deps.runs, run.runId, (r) =>
      drives(r)
        ? {
            ...r,
            blocked: blockedAfter(r.blocked, blocked, now),
            failing: r.failing ? { ...r.failing, stalls } : r.failing,
          }
        : r,
    );
    // A part paused mid-collect comes back at once, a call stopped on an error after a Retry's pause,
    // batches still cancelling at the shortest poll.
    const collecting = left.some((p) => p.status === 'collecting');
    const wait = stopped ? 5 : collecting ? 1 : Math.min(60, Math.max(1, deps.work.settings.minPollSeconds));
    return result(false, wait);
  }
  const pending = [...parts.values()].filter((p) => p.status === 'pending').length;
  const notes = [
    left.length > 0 ? `${left.length} batch(es) were still on OpenAI when the run was marked failed` : '',
    pending > 0 ? `${pending} part(s) were not sent or not finished` : '',
  ].filter((n) => n.length > 0);
  const resumable = notes.length > 0 ? ` (${notes.join('; ')}: resume the run to finish them)` : '';
  const error = `${failure}${resumable}`;
  // Release, expire and announce first, then write the status: a MarkFailed that dies between them is
  // run again and does them again (each is safe to repeat), and a resume is refused until the status says
  // failed (see resumeRun), so none of them can land on a run another execution took over.
  await deps.runs.settleClaim(failing.work, failing.datasetHash, failing.runId, 'failed');
  await markIntermediatesEnded(deps, failing.runId);
  await deps.notifier.notify('Run Failed', {
    runId: failing.runId,
    work: failing.work,
    error: input.error,
    message: error,
  });
  const final = await updateRun(deps.runs, run.runId, (r) =>
    drives(r) ? { ...r, status: 'failed', error, failing: null, waiting: null, updatedAt: deps.now() } : r,
  );
  if (!drives(final)) return superseded();
  deps.log('run failed', {
    runId: final.runId,
    error: input.error,
    message,
    batchesLeft: left.length,
    partsPending: pending,
  });
  return result(true);
}

/** The message inside a Step Functions error cause (a Lambda error's JSON), or the cause itself. */
export function causeMessage(cause: string): string {
  try {
    const parsed = JSON.parse(cause) as { errorMessage?: unknown; message?: unknown };
    if (typeof parsed.errorMessage === 'string') return parsed.errorMessage;
    if (typeof parsed.message === 'string') return parsed.message;
  } catch {
    // not JSON: the cause is the message
  }
  return cause;
}
