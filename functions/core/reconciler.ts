import type { BatchFailure, Part } from './run';
import type { WorkSettings } from './work';

/** What the reconciler needs to know of an OpenAI batch. */
export interface BatchView {
  readonly id: string;
  readonly status: string;
  readonly total: number;
  readonly completed: number;
  readonly failed: number;
  readonly outputFileId: string | null;
  readonly errorFileId: string | null;
  readonly errors: readonly BatchFailure[];
  /** The batch's metadata, by which a batch whose create answer was lost is found again. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Unix seconds. */
  readonly createdAt: number;
}

/** OpenAI statuses in which a batch still moves on its own. */
const MOVING = new Set(['validating', 'in_progress', 'finalizing', 'cancelling']);
/** OpenAI statuses after which the part's results are collected. */
const FINISHED = new Set(['completed', 'expired', 'cancelled']);

/** How long a part waits after OpenAI's enqueued-token limit refused it: doubling, 1 to 30 minutes. */
export function throttleDelayMs(throttles: number): number {
  return Math.min(30 * 60_000, 60_000 * 2 ** Math.max(0, throttles - 1));
}

/**
 * A part's next state once its batch has been seen. Moving batches update counts (and the time of last
 * progress); finished ones go to collecting; a batch failed by the enqueued-token limit sends the part
 * back to pending with a growing delay (it cost nothing and is retried, never failed); any other failure
 * goes to collecting with the failure, so that every request of the part ends in errors or is resent.
 */
export function observe(part: Part, batch: BatchView, now: number): Part {
  const moved =
    batch.status !== part.batchStatus || batch.completed !== part.completed || batch.failed !== part.failed;
  const seen: Part = {
    ...part,
    batchId: batch.id,
    batchStatus: batch.status,
    completed: batch.completed,
    failed: batch.failed,
    submittingSince: null,
    lastProgressAt: moved ? now : (part.lastProgressAt ?? now),
  };
  if (MOVING.has(batch.status)) return { ...seen, status: 'active' };
  if (FINISHED.has(batch.status)) {
    return {
      ...seen,
      status: 'collecting',
      outputFileId: batch.outputFileId,
      errorFileId: batch.errorFileId,
    };
  }
  if (batch.status === 'failed') {
    if (batch.errors.some((e) => e.code === 'token_limit_exceeded')) {
      const throttles = part.throttles + 1;
      return {
        ...seen,
        status: 'pending',
        batchId: null,
        throttles,
        notBefore: now + throttleDelayMs(throttles),
      };
    }
    const failure =
      batch.errors.length > 0
        ? keptFailures(batch.errors)
        : [{ code: 'batch_failed', message: `OpenAI failed batch ${batch.id} without a reason`, line: null }];
    return { ...seen, status: 'collecting', failure };
  }
  // A status this does not know (a new one of OpenAI's, another provider's): the batch exists, so it is
  // polled until it says one it knows. Left `submitting`, the part was taken for a lost create and sent
  // again, a new paid batch each time.
  return { ...seen, status: 'active' };
}

/**
 * The most of a failed batch's errors a part keeps, in JSON bytes: the part is one DynamoDB item (400 KB
 * at most), and a batch refused line by line may list an error for each of its 50,000 lines.
 */
export const FAILURE_BYTES = 256 * 1024;

/**
 * A failed batch's errors as the part keeps them: the first ones, up to FAILURE_BYTES. A line whose error
 * is left out is taken for one OpenAI did not refuse: it is resent (a batch refused at validation cost
 * nothing) and refused again, with its own error, or, once nothing is resent, ends in errors under the
 * batch's first error. No line kept loses its own error.
 */
function keptFailures(errors: readonly BatchFailure[]): BatchFailure[] {
  const kept: BatchFailure[] = [];
  let bytes = 2;
  for (const error of errors) {
    bytes += JSON.stringify(error).length + 1;
    if (bytes > FAILURE_BYTES) break;
    kept.push(error);
  }
  return kept;
}

/** True while a part holds a place among the run's batches on OpenAI. */
export function isInFlight(part: Part): boolean {
  return part.status === 'submitting' || part.status === 'active';
}

/**
 * The pending parts to send now, in part order: as many as `maxActiveBatches` leaves room for, within
 * `maxEnqueuedTokens` when set. A part larger than the whole token budget is still sent when nothing
 * else is in flight, so that a run cannot stall on it.
 */
export function admit(
  parts: readonly Part[],
  settings: Pick<WorkSettings, 'maxActiveBatches' | 'maxEnqueuedTokens'>,
  now: number,
): Part[] {
  const inFlight = parts.filter(isInFlight);
  let room = settings.maxActiveBatches - inFlight.length;
  let enqueued = inFlight.reduce((sum, p) => sum + p.estimatedTokens, 0);
  const budget = settings.maxEnqueuedTokens ?? Number.POSITIVE_INFINITY;
  const chosen: Part[] = [];
  const ready = parts
    .filter((p) => p.status === 'pending' && p.notBefore <= now)
    .sort((a, b) => a.part - b.part);
  for (const part of ready) {
    if (room <= 0) break;
    const fits = enqueued + part.estimatedTokens <= budget || (enqueued === 0 && chosen.length === 0);
    if (!fits) break; // keep part order: a smaller later part does not jump the queue
    chosen.push(part);
    room -= 1;
    enqueued += part.estimatedTokens;
  }
  return chosen;
}

/**
 * Seconds until the next tick: the shortest poll while anything moved; doubling up to the longest while
 * nothing did; at once when a tick left work it could have done (a part to collect, a part there is room
 * to send). A pending part waiting for room waits with the batches in flight: their end makes the room.
 * Never later than the moment a throttled part may be sent again, when there will be room for it then.
 */
export function nextWait(
  parts: readonly Part[],
  moved: boolean,
  previousSeconds: number,
  settings: Pick<
    WorkSettings,
    'minPollSeconds' | 'maxPollSeconds' | 'maxActiveBatches' | 'maxEnqueuedTokens'
  >,
  now: number,
): number {
  let seconds = moved
    ? settings.minPollSeconds
    : Math.min(settings.maxPollSeconds, Math.max(settings.minPollSeconds, previousSeconds * 2));
  const anyInFlight = parts.some(isInFlight);
  const hasRoomFor = roomLeft(parts, settings);
  for (const part of parts) {
    if (part.status === 'pending' && part.notBefore > now && hasRoomFor(part)) {
      const until = Math.ceil((part.notBefore - now) / 1000);
      seconds = anyInFlight
        ? Math.min(seconds, Math.max(settings.minPollSeconds, until))
        : Math.max(1, until);
    }
  }
  if (parts.some((p) => p.status === 'collecting') || admit(parts, settings, now).length > 0) {
    seconds = Math.min(seconds, 1); // work this tick could not finish: come back at once
  }
  return Math.max(1, Math.min(seconds, settings.maxPollSeconds));
}

/**
 * Whether the batches in flight leave room to send a part: a place below `maxActiveBatches` and its
 * tokens within `maxEnqueuedTokens` (or nothing in flight, as `admit` allows).
 */
function roomLeft(
  parts: readonly Part[],
  settings: Pick<WorkSettings, 'maxActiveBatches' | 'maxEnqueuedTokens'>,
): (part: Part) => boolean {
  const inFlight = parts.filter(isInFlight);
  const enqueued = inFlight.reduce((sum, p) => sum + p.estimatedTokens, 0);
  const budget = settings.maxEnqueuedTokens ?? Number.POSITIVE_INFINITY;
  return (part) =>
    inFlight.length < settings.maxActiveBatches &&
    (enqueued === 0 || enqueued + part.estimatedTokens <= budget);
}

/** True when every part is done. */
export function allDone(parts: readonly Part[]): boolean {
  return parts.every((p) => p.status === 'done');
}

/** The metadata every batch of a run carries, by which a lost create is found again. */
export function batchMetadata(runId: string, work: string, part: Part): Record<string, string> {
  return { openai_batch_run: runId, work, part: String(part.part), attempt: String(part.attempt) };
}

/**
 * The batch a crashed or unanswered create made for this part and attempt, if any, from a list of
 * recent batches (found by its metadata, never by guess).
 */
export function findOwnBatch(
  runId: string,
  part: Part,
  batches: readonly BatchView[],
): BatchView | undefined {
  return batches.find(
    (b) =>
      b.metadata.openai_batch_run === runId &&
      b.metadata.part === String(part.part) &&
      b.metadata.attempt === String(part.attempt),
  );
}

/** How long (ms) an active part's batch has not moved: the no-progress alarm watches the longest. */
export function stalledFor(part: Part, now: number): number {
  return part.status === 'active' && part.lastProgressAt !== null ? now - part.lastProgressAt : 0;
}
