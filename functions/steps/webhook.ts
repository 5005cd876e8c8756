import { z } from 'zod';
import { messageOf } from '../core/errors';
import { executionName } from '../core/execution-names';
import { describeIssues } from '../core/issues';
import type { RunStore } from '../core/ports';
import type { Run } from '../core/run';
import type { Log } from './deps';
import { updateRun } from './runs';

/** OpenAI's batch webhook events (the payload names the batch, nothing more). */
export const BatchEventSchema = z.object({
  id: z.string().min(1),
  type: z.string().min(1),
  created_at: z.number(),
  data: z.object({ id: z.string().min(1) }),
});

/** Starting and stopping executions of the run's state machine (Step Functions, or the local runner). */
export interface ExecutionControl {
  /** Starts an execution that resumes a run (its Register takes the run over). */
  start(name: string, input: { dataset: string; resumeRunId: string }): Promise<void>;
  /** Stops an execution by name; an execution that already ended is not an error. */
  stop(name: string): Promise<void>;
}

/** What receiving a webhook needs. */
export interface WebhookDeps {
  readonly runs: RunStore;
  /** Checks the signature and the timestamp of a delivery; throws when either is wrong. */
  readonly verify: (body: string, headers: Record<string, string>) => Promise<unknown>;
  readonly control: ExecutionControl;
  readonly now: () => number;
  readonly log: Log;
}

/** An HTTP request as a Lambda Function URL (or the local receiver) hands it over. */
export interface WebhookRequest {
  readonly body: string;
  readonly headers: Record<string, string>;
}

/** What the receiver answers: OpenAI retries anything but a 2xx. */
export interface WebhookResponse {
  readonly statusCode: number;
  readonly body: string;
}

/** How long an event id is remembered: longer than OpenAI retries a delivery (72 h). */
const EVENT_MEMORY_SECONDS = 7 * 24 * 3600;

const FINISHED: readonly Run['status'][] = ['completed', 'failed', 'cancelled'];

/** The dataset a resumed execution is given (Register ignores it when resuming; it is for people). */
function datasetOf(run: Run): string {
  return `s3://${run.bucket}/${run.dataset.key}`;
}

/**
 * The receiver cannot read its own signing secret (IAM, the placeholder still in it, an outage): the
 * delivery may be good, so the receiver answers 500 and OpenAI retries, instead of a 401 that blames it.
 */
export class WebhookSecretError extends Error {
  override readonly name = 'WebhookSecretError';
}

/**
 * Wraps the reader of the webhook signing secret so that its failures are told apart from a bad
 * signature (see {@link WebhookSecretError}). The cause keeps the reader's message, never the secret.
 */
export function receiverSecret(read: () => Promise<string>): () => Promise<string> {
  return async () => {
    try {
      return await read();
    } catch (caught) {
      throw new WebhookSecretError(`The webhook signing secret cannot be read: ${messageOf(caught)}`, {
        cause: caught,
      });
    }
  };
}

const answer = (statusCode: number, outcome: string): WebhookResponse => ({
  statusCode,
  body: JSON.stringify({ outcome }),
});

/**
 * Receives one webhook delivery: verifies it, refuses one seen before, finds the run of the batch, and
 * makes the run's next Tick happen now. When the run's execution is in its Wait state, a new execution
 * resumes the run (its Register takes the run over, the old execution is stopped, and, if stopping fails,
 * its next Tick sees that it was replaced and ends). When a Tick is running, that Tick waits the shortest
 * time instead. Anything that goes wrong leaves the run to polling, which finishes every run anyway.
 */
export async function receiveWebhook(deps: WebhookDeps, request: WebhookRequest): Promise<WebhookResponse> {
  let verified: unknown;
  try {
    verified = await deps.verify(request.body, request.headers);
  } catch (caught) {
    if (caught instanceof WebhookSecretError) {
      deps.log('webhook not verified: the signing secret cannot be read', { reason: messageOf(caught) });
      return answer(500, 'signing secret unreadable');
    }
    deps.log('webhook refused', { reason: messageOf(caught) });
    return answer(401, 'invalid signature');
  }
  const parsed = BatchEventSchema.safeParse(verified);
  if (!parsed.success) {
    deps.log('webhook refused', { reason: describeIssues(parsed.error, verified).join('; ') });
    return answer(400, 'not a batch event');
  }
  const event = parsed.data;
  if (!event.type.startsWith('batch.')) return answer(200, 'ignored');
  if (!(await deps.runs.recordEvent(event.id, Math.floor(deps.now() / 1000) + EVENT_MEMORY_SECONDS))) {
    deps.log('webhook replayed', { eventId: event.id });
    return answer(200, 'replayed');
  }
  try {
    const where = await deps.runs.findBatch(event.data.id);
    if (!where) {
      deps.log('webhook for a batch of no run', { eventId: event.id, batchId: event.data.id });
      return answer(200, 'unknown batch');
    }
    let replaced: string | null = null;
    let before: Run | null = null;
    const run = await updateRun(deps.runs, where.runId, (r) => {
      before = r;
      replaced = null;
      if (FINISHED.includes(r.status)) return r;
      if (r.waiting !== null && r.waiting === r.execution) {
        replaced = r.execution;
        return { ...r, waiting: null };
      }
      return r.wakePending ? r : { ...r, wakePending: true }; // a burst of events: one write
    });
    const old: string | null = replaced;
    if (old === null) {
      deps.log('webhook: the running tick will come back at once', {
        runId: run.runId,
        eventId: event.id,
      });
      return answer(200, FINISHED.includes(run.status) ? 'run finished' : 'tick running');
    }
    const next = executionName(run.runId, 'wake', deps.now());
    try {
      await deps.control.start(next, { dataset: datasetOf(run), resumeRunId: run.runId });
    } catch (caught) {
      // Give the waiting execution back its place, unless the run moved on meanwhile, so that OpenAI's
      // retry of this delivery can wake it.
      const waitingAgain = before as Run | null;
      if (waitingAgain) await deps.runs.putRun({ ...waitingAgain, version: run.version }).catch(() => {});
      throw caught;
    }
    await deps.control.stop(old).catch((caught: unknown) => {
      deps.log('webhook: stopping the waiting execution failed (its next tick ends it)', {
        runId: run.runId,
        execution: old,
        reason: messageOf(caught),
      });
    });
    deps.log('webhook woke the run', {
      runId: run.runId,
      eventId: event.id,
      type: event.type,
      execution: next,
    });
    return answer(200, 'woken');
  } catch (caught) {
    // Let OpenAI's retry be handled: the event was not acted on. Until then, polling carries the run.
    await deps.runs.forgetEvent(event.id).catch(() => {});
    deps.log('webhook failed', { eventId: event.id, reason: messageOf(caught) });
    return answer(500, 'failed');
  }
}
