import { InvariantError, messageOf, OpenAIUnavailableError } from '../core/errors';
import { type BatchApi, ConflictError } from '../core/ports';
import {
  admit,
  allDone,
  batchMetadata,
  findOwnBatch,
  nextWait,
  observe,
  stalledFor,
} from '../core/reconciler';
import { type Part, type Run, runKeys } from '../core/run';
import { type CollectOptions, collect } from './collect-part';
import type { StepDeps } from './deps';
import { runOf, updateRun } from './runs';

/** What Tick answers: small, for the state. */
export interface Ticked {
  readonly done: boolean;
  readonly waitSeconds: number;
  /** The execution has run enough ticks: the run continues in a new execution (history limit). */
  readonly continueAsNew: boolean;
  /** Another execution drives the run now (a webhook woke it, or it continued): this one ends. */
  readonly superseded: boolean;
}

/**
 * The start of a Tick: the run, unless another execution drives it now. Clears `waiting`, so that a
 * webhook from here on asks this Tick to come back at once instead of replacing the execution.
 */
async function takeRun(
  deps: StepDeps<unknown>,
  runId: string,
  execution: string | undefined,
): Promise<Run | null> {
  for (let attempt = 1; ; attempt++) {
    const run = await runOf(deps.runs, runId);
    if (execution !== undefined && run.execution !== execution) return null;
    if (run.waiting === null) return run;
    try {
      return await deps.runs.putRun({ ...run, waiting: null });
    } catch (caught) {
      if (!(caught instanceof ConflictError) || attempt >= 8) throw caught;
    }
  }
}

/** An object store's answer that the object is gone or may not be read (404, 403): no retry changes it. */
function isGoneOrDenied(caught: unknown): boolean {
  const name = (caught as { name?: unknown } | null)?.name;
  const status = (caught as { $metadata?: { httpStatusCode?: unknown } } | null)?.$metadata?.httpStatusCode;
  return name === 'NoSuchKey' || name === 'AccessDenied' || status === 403 || status === 404;
}

/**
 * An OpenAI error that says the request was refused before anything was created (4xx but 408/409/429):
 * the part's problem. A refused key or an exhausted quota is the run's (see {@link blockedBy}).
 */
export function refusedBeforeActing(caught: unknown): boolean {
  if (blockedBy(caught)) return false;
  const status = (caught as { status?: unknown } | null)?.status;
  return typeof status === 'number' && status >= 400 && status < 500 && ![408, 409, 429].includes(status);
}

/**
 * How long (ms) an execution drives a run before it hands it to a new one: half of the state machine's
 * 20-day timeout, which no Catch can see (a timed-out execution would leave its run `running`).
 */
export const EXECUTION_HAND_OVER_MS = 10 * 24 * 3600_000;

/** What one pass over a run's parts works with. */
export interface Pass<R> {
  readonly deps: StepDeps<R>;
  readonly api: BatchApi;
  /** The run as last written by this pass. */
  run: Run;
  readonly parts: Map<number, Part>;
  readonly started: number;
  readonly outOfTime: () => boolean;
  /** Writes a part if nobody else changed it meanwhile. */
  readonly save: (part: Part) => Promise<Part | null>;
}

/** The OpenAI condition an error carries (anywhere in its cause chain), or null when it is another error. */
export function blockedBy(caught: unknown): OpenAIUnavailableError | null {
  for (let error = caught, depth = 0; error instanceof Error && depth < 5; error = error.cause, depth++)
    if (error instanceof OpenAIUnavailableError) return error;
  return null;
}

/**
 * Does a pass's work with OpenAI: an outage or a refusal stops it where it is (everything written so far
 * stands) and is returned, logged; any other error passes.
 */
export async function whileOpenAIAnswers(
  deps: Pick<StepDeps<unknown>, 'log'>,
  runId: string,
  message: string,
  work: () => Promise<void>,
): Promise<OpenAIUnavailableError | null> {
  try {
    await work();
    return null;
  } catch (caught) {
    const blocked = blockedBy(caught);
    if (!blocked) throw caught;
    deps.log(message, { runId, reason: blocked.reason, status: blocked.status, error: blocked.message });
    return blocked;
  }
}

/** The run's `blocked` after a pass: kept with its first time while the same condition lasts. */
export function blockedAfter(
  previous: Run['blocked'],
  now: OpenAIUnavailableError | null,
  at: number,
): Run['blocked'] {
  if (!now) return null;
  return {
    reason: now.reason,
    message: now.message,
    since: previous?.reason === now.reason ? previous.since : at,
  };
}

/**
 * Creates whose answer was lost: the batch is found by its metadata, or, once it had long enough to show
 * in the list (or no file was uploaded, so the create was never reached), the part is sent again.
 */
export async function recoverLostCreates<R>(pass: Pass<R>): Promise<void> {
  const { deps, api, run, parts, save, started } = pass;
  const lost = [...parts.values()].filter((p) => p.status === 'submitting');
  if (lost.length === 0) return;
  const since = Math.floor(Math.min(...lost.map((p) => p.submittingSince ?? started)) / 1000) - 60;
  const recent = await api.recentBatches(since);
  for (const part of lost) {
    const own = findOwnBatch(run.runId, part, recent);
    if (own) {
      await deps.runs.recordBatch(own.id, run.runId, part.part);
      await save(observe(part, own, deps.now()));
    } else if (part.fileId === null || started - (part.submittingSince ?? 0) > deps.lostCreateGraceMs) {
      await save({ ...part, status: 'pending', submittingSince: null });
    }
  }
}

/** Asks OpenAI to cancel every batch of the run in flight; their partial results are collected later. */
export async function cancelActive<R>(pass: Pass<R>): Promise<void> {
  let worked = false;
  for (const part of [...pass.parts.values()]) {
    if (part.status !== 'active' || !part.batchId || part.batchStatus === 'cancelling') continue;
    if (worked && pass.outOfTime()) return; // the rest at the next pass
    worked = true;
    const seen = observe(part, await pass.api.cancelBatch(part.batchId), pass.deps.now());
    await pass.save(seen);
  }
}

/** Polls the batches in flight, writing what changed. */
export async function pollActive<R>(pass: Pass<R>): Promise<void> {
  const { deps, api, parts, save } = pass;
  let worked = false;
  for (const part of [...parts.values()].filter((p) => p.status === 'active' && p.batchId)) {
    if (worked && pass.outOfTime()) return; // a slow OpenAI: the rest at the next pass
    worked = true;
    const seen = observe(part, await api.getBatch(part.batchId ?? ''), deps.now());
    if (worthWriting(part, seen, deps.now(), deps.work.settings.minPollSeconds * 1000)) await save(seen);
  }
}

/**
 * Collects finished parts, within the time budget (at least one each pass). Resubmission part numbers
 * are reserved first, so that a collect run again reuses them; `canResubmit` says which parts' leftovers
 * are sent again (else they end in errors).
 */
export async function collectFinished<R>(
  pass: Pass<R>,
  canResubmit: (part: Part) => boolean,
  options: CollectOptions = {},
): Promise<void> {
  const { deps, parts, save } = pass;
  const collecting = [...parts.values()].filter((p) => p.status === 'collecting');
  const needChild = collecting.filter((p) => canResubmit(p) && p.childPart === null);
  if (needChild.length > 0) {
    pass.run = await updateRun(deps.runs, pass.run.runId, (r) => ({
      ...r,
      nextPart: r.nextPart + needChild.length,
    }));
    let nextPart = pass.run.nextPart - needChild.length;
    for (const part of needChild) await save({ ...part, childPart: nextPart++ });
  }
  let worked = false;
  for (const part of [...parts.values()].filter((p) => p.status === 'collecting')) {
    if (worked && pass.outOfTime()) break;
    // A part whose hooks are slow pauses with a cursor when the time is up, and goes on next pass.
    const child = await collect(deps, pass.api, pass.run, part, save, {
      ...options,
      shouldPause: pass.outOfTime,
    });
    if (child) parts.set(child.part, child);
    worked = true;
  }
}

/**
 * One pass of the reconciler over a run: recover creates whose answer was lost, poll batches in flight,
 * collect finished ones (resubmitting leftovers as new parts), submit pending parts within the limits,
 * and choose the next wait. Every part update is conditional on its version, so a pass that races with
 * another (a retried Lambda) loses its write instead of doubling work. Bounded by the time budget.
 *
 * OpenAI unavailable, a refused key or an exhausted quota stops the pass where it is (every write so far
 * stands) and the run waits, backing off, with `blocked` saying why: it goes on by itself once OpenAI
 * answers, and no record ends in errors because of it.
 */
export async function tick<R>(
  deps: StepDeps<R>,
  input: { runId: string; executionName?: string | undefined },
): Promise<Ticked> {
  const started = deps.now();
  const outOfTime = () => deps.now() - started > deps.budgetMs;
  const taken = await takeRun(deps as StepDeps<unknown>, input.runId, input.executionName);
  if (!taken) {
    deps.log('tick superseded: another execution drives the run', { runId: input.runId });
    return { done: false, waitSeconds: 0, continueAsNew: false, superseded: true };
  }
  let run = taken;
  const parts = new Map((await deps.runs.listParts(run.runId)).map((p) => [p.part, p]));
  let moved = false;
  let blocked: OpenAIUnavailableError | null = null;

  /** Writes a part if nobody else changed it meanwhile; notes whether the run moved. */
  const save = async (part: Part): Promise<Part | null> => {
    const before = parts.get(part.part);
    const saved = await deps.runs.putPart(run.runId, part);
    if (!saved) return null;
    parts.set(saved.part, saved);
    // Only a change of state resets the wait to the shortest: counts creeping up do not.
    if (!before || before.status !== saved.status || before.batchStatus !== saved.batchStatus) moved = true;
    return saved;
  };

  if (parts.size > 0) {
    blocked = await whileOpenAIAnswers(
      deps,
      run.runId,
      'OpenAI cannot be used now; the run waits',
      async () => {
        const pass: Pass<R> = { deps, api: await deps.openai(), run, parts, started, outOfTime, save };
        await recoverLostCreates(pass);
        // A cancelled run: cancel what is on OpenAI (its partial results are collected below), and put every
        // part not sent yet in errors, so that nothing of it is silently dropped.
        if (run.cancelRequested) {
          await cancelActive(pass);
          for (const part of [...parts.values()].filter((p) => p.status === 'pending')) {
            await save({
              ...part,
              status: 'collecting',
              failure: [
                {
                  code: 'run_cancelled',
                  message: 'The run was cancelled before this part was sent to OpenAI.',
                  line: null,
                },
              ],
            });
          }
        }
        await pollActive(pass);
        await collectFinished(
          pass,
          (p) => !run.cancelRequested && p.generation < deps.work.settings.maxResubmits,
        );
        run = pass.run;
        // Pending parts, within maxActiveBatches and the enqueued-token budget; never a held one (Settle
        // has not yet taken its duplicate custom_ids from it).
        let worked = false;
        for (const part of run.cancelRequested
          ? []
          : admit(sendable(parts), deps.work.settings, deps.now())) {
          if (worked && outOfTime()) break;
          await submit(deps, pass.api, run, part, save);
          worked = true;
        }
      },
    );
  }

  const all = [...parts.values()];
  const done = run.prepared && allDone(all);
  const settings = deps.work.settings;
  // While OpenAI is blocked, back off from the shortest poll to the longest, whatever is ready to go.
  const chosen = done
    ? 0
    : blocked
      ? Math.min(settings.maxPollSeconds, Math.max(settings.minPollSeconds, run.waitSeconds * 2))
      : nextWait(sendable(parts), moved, run.waitSeconds, settings, deps.now());
  // A webhook that came while this Tick ran: the next Tick comes a second later, whatever the poll
  // interval (with webhooks it may be an hour: the news must not wait for it).
  // A Tick whose execution was replaced while it ran (a webhook) leaves the wake fields to the new one.
  let waitSeconds = chosen;
  const now = deps.now();
  run = await updateRun(deps.runs, run.runId, (r) => {
    const driving = input.executionName === undefined || r.execution === input.executionName;
    waitSeconds = driving && r.wakePending && !done && !blocked ? 1 : chosen;
    const execution = input.executionName ?? r.execution;
    return {
      ...r,
      ticks: driving ? r.ticks + 1 : r.ticks,
      waitSeconds,
      updatedAt: now,
      blocked: parts.size > 0 ? blockedAfter(r.blocked, blocked, now) : r.blocked,
      executionSince:
        driving && r.executionSince?.name !== execution ? { name: execution, at: started } : r.executionSince,
      ...(driving ? { wakePending: false, waiting: done ? null : (input.executionName ?? null) } : {}),
    };
  });
  const stalledMs = Math.max(
    0,
    ...all.map((p) => stalledFor(p, now)),
    run.blocked ? now - run.blocked.since : 0,
  );
  deps.metric('MinutesWithoutProgress', Math.floor(stalledMs / 60_000));
  deps.metric('OpenAIAccessRefused', run.blocked && run.blocked.reason !== 'openai_unavailable' ? 1 : 0);
  const counts = { pending: 0, submitting: 0, active: 0, collecting: 0, done: 0 };
  for (const p of all) counts[p.status] += 1;
  deps.log('tick', {
    runId: run.runId,
    ...counts,
    waitSeconds,
    runDone: done,
    ...(run.blocked ? { blocked: run.blocked.reason } : {}),
  });
  const executionAge = run.executionSince ? now - run.executionSince.at : 0;
  return {
    done,
    waitSeconds,
    continueAsNew:
      !done &&
      (run.ticks >= deps.maxTicksPerExecution || executionAge + waitSeconds * 1000 >= EXECUTION_HAND_OVER_MS),
    superseded: false,
  };
}

/**
 * Sends the released parts there is room for, outside a Tick: lane 0 calls it once shard 0 is settled, so
 * that the first batches go out while the other shards are still preparing. Only sends: polling and
 * collecting are the Ticks', which start once the run is prepared; a part whose create was lost is found
 * by metadata there. OpenAI unavailable, a refused key or an exhausted quota stop it quietly: the parts
 * stay pending and Tick sends them. Answers how many parts it sent.
 */
export async function sendReleased<R>(
  deps: StepDeps<R>,
  runId: string,
  mayGoOn: () => boolean,
): Promise<number> {
  const run = await runOf(deps.runs, runId);
  if (run.cancelRequested) return 0;
  const parts = new Map((await deps.runs.listParts(runId)).map((p) => [p.part, p]));
  const save = async (part: Part): Promise<Part | null> => {
    const saved = await deps.runs.putPart(runId, part);
    if (saved) parts.set(saved.part, saved);
    return saved;
  };
  let sent = 0;
  await whileOpenAIAnswers(
    deps,
    runId,
    'OpenAI cannot be used now; Tick sends the first parts later',
    async () => {
      const api = await deps.openai();
      for (const part of admit(sendable(parts), deps.work.settings, deps.now())) {
        if (!mayGoOn()) break;
        await submit(deps, api, run, part, save);
        sent += 1;
      }
    },
  );
  if (sent > 0) deps.log('first parts sent while the run prepares', { runId, parts: sent });
  return sent;
}

/** The parts Tick may send: every one but those Settle still holds. */
export function sendable(parts: ReadonlyMap<number, Part>): Part[] {
  return [...parts.values()].filter((p) => !p.held);
}

/**
 * Whether a polled part is worth a write: a change of state always is; counts that moved once the last
 * write is at least the shortest poll old (fresh progress bars, at most a write a batch a poll).
 */
export function worthWriting(before: Part, after: Part, now: number, minIntervalMs: number): boolean {
  if (before.status !== after.status || before.batchStatus !== after.batchStatus) return true;
  if (before.completed === after.completed && before.failed === after.failed) return false;
  return now - (before.lastProgressAt ?? 0) >= minIntervalMs;
}

/** Sends a pending part: intent first, then the file (once), then the batch, recording each answer. */
async function submit<R>(
  deps: StepDeps<R>,
  api: BatchApi,
  run: Run,
  pending: Part,
  save: (p: Part) => Promise<Part | null>,
) {
  const keys = runKeys(run.runId);
  let part = await save({
    ...pending,
    status: 'submitting',
    attempt: pending.attempt + 1,
    submittingSince: deps.now(),
  });
  if (!part) return; // another pass took it
  const requestFile = keys.requests(part.part);
  let unreadable: InvariantError | null = null;
  try {
    if (!part.fileId) {
      const fileId = await api
        .uploadFile(
          `${run.runId}.part-${String(part.part).padStart(5, '0')}.jsonl`,
          deps.blobs.read(requestFile),
        )
        .catch((caught: unknown) => {
          // The file's read failed (thrown as itself): gone or denied, no later pass can send it, and it is
          // not OpenAI's doing. The run fails, saying which file and why.
          if (!isGoneOrDenied(caught)) throw caught;
          unreadable = new InvariantError(
            `the request file s3://${deps.bucket}/${requestFile} of part ${pending.part} cannot be read: ${messageOf(caught)}`,
          );
          throw unreadable;
        });
      // The lost-create grace runs from the create, not from the upload before it (which may be long).
      part = await save({ ...part, fileId, submittingSince: deps.now() });
      if (!part) return;
    }
    const batch = await api.createBatch({
      fileId: part.fileId ?? '',
      endpoint: deps.work.settings.endpoint,
      metadata: batchMetadata(run.runId, run.work, part),
    });
    await deps.runs.recordBatch(batch.id, run.runId, part.part);
    await save(observe(part, batch, deps.now()));
  } catch (caught) {
    if (caught === unreadable) throw caught;
    if (blockedBy(caught)) {
      // The run waits for OpenAI; the part stays submitting and the next pass looks for its batch.
      deps.log('submit stopped: OpenAI cannot be used now', { runId: run.runId, part: pending.part });
      throw caught;
    }
    if (part && refusedBeforeActing(caught)) {
      // OpenAI refused the file or the batch outright: every request of the part ends in errors with why.
      const failure = [
        {
          code: 'batch_refused',
          message: `OpenAI refused part ${part.part}: ${messageOf(caught)}`,
          line: null,
        },
      ];
      await save({ ...part, status: 'collecting', submittingSince: null, failure });
      return;
    }
    // The answer may be lost while the batch exists: the next pass looks for it by metadata.
    deps.log('submit failed; will look for the batch by metadata', {
      runId: run.runId,
      part: pending.part,
      error: messageOf(caught),
    });
  }
}
