import { messageOf } from '../core/errors';
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
import { collect } from './collect-part';
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

/** An OpenAI error that says the request was refused before anything was created (4xx but 408/409/429). */
export function refusedBeforeActing(caught: unknown): boolean {
  const status = (caught as { status?: unknown } | null)?.status;
  return typeof status === 'number' && status >= 400 && status < 500 && ![408, 409, 429].includes(status);
}

/**
 * One pass of the reconciler over a run: recover creates whose answer was lost, poll batches in flight,
 * collect finished ones (resubmitting leftovers as new parts), submit pending parts within the limits,
 * and choose the next wait. Every part update is conditional on its version, so a pass that races with
 * another (a retried Lambda) loses its write instead of doubling work. Bounded by the time budget.
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
  const api = parts.size > 0 ? await deps.openai() : null;
  let moved = false;

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

  if (api) {
    // 1. Creates whose answer was lost: find the batch by its metadata, or send the part again.
    const lost = [...parts.values()].filter((p) => p.status === 'submitting');
    if (lost.length > 0) {
      const since = Math.floor(Math.min(...lost.map((p) => p.submittingSince ?? started)) / 1000) - 60;
      const recent = await api.recentBatches(since);
      for (const part of lost) {
        const own = findOwnBatch(run.runId, part, recent);
        if (own) {
          await deps.runs.recordBatch(own.id, run.runId, part.part);
          await save(observe(part, own, deps.now()));
        } else if (part.fileId === null || started - (part.submittingSince ?? 0) > deps.lostCreateGraceMs) {
          // No file id: the create was never reached. Else the batch list had long enough to show it.
          await save({ ...part, status: 'pending', submittingSince: null });
        }
      }
    }

    // A cancelled run: cancel what is on OpenAI (its partial results are collected below), and put every
    // part not sent yet in errors, so that nothing of it is silently dropped.
    if (run.cancelRequested) {
      for (const part of [...parts.values()]) {
        if (part.status === 'active' && part.batchId && part.batchStatus !== 'cancelling')
          await api.cancelBatch(part.batchId);
        if (part.status === 'pending') {
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
    }

    // 2. Batches in flight.
    for (const part of [...parts.values()].filter((p) => p.status === 'active' && p.batchId)) {
      const batch = await api.getBatch(part.batchId ?? '');
      const seen = observe(part, batch, deps.now());
      if (worthWriting(part, seen, deps.now(), deps.work.settings.minPollSeconds * 1000)) await save(seen);
    }

    // 3. Finished batches: reserve resubmission part numbers first, so a collect run again reuses them.
    const collecting = [...parts.values()].filter((p) => p.status === 'collecting');
    const canResubmit = (p: Part) => !run.cancelRequested && p.generation < deps.work.settings.maxResubmits;
    const needChild = collecting.filter((p) => canResubmit(p) && p.childPart === null);
    if (needChild.length > 0) {
      run = await updateRun(deps.runs, run.runId, (r) => ({
        ...r,
        checkpoint: { ...r.checkpoint, nextPart: r.checkpoint.nextPart + needChild.length },
      }));
      let nextPart = run.checkpoint.nextPart - needChild.length;
      for (const part of needChild) await save({ ...part, childPart: nextPart++ });
    }
    // Each loop does at least one piece of work before it looks at the clock, so every tick progresses.
    let worked = false;
    for (const part of [...parts.values()].filter((p) => p.status === 'collecting')) {
      if (worked && outOfTime()) break;
      const child = await collect(deps, api, run, part, save);
      if (child) parts.set(child.part, child);
      worked = true;
    }

    // 4. Pending parts, within maxActiveBatches and the enqueued-token budget.
    worked = false;
    for (const part of run.cancelRequested
      ? []
      : admit([...parts.values()], deps.work.settings, deps.now())) {
      if (worked && outOfTime()) break;
      await submit(deps, api, run, part, save);
      worked = true;
    }
  }

  const all = [...parts.values()];
  const done = run.prepared && allDone(all);
  const chosen = done ? 0 : nextWait(all, moved, run.waitSeconds, deps.work.settings, deps.now());
  // A webhook that came while this Tick ran: the next Tick comes a second later, whatever the poll
  // interval (with webhooks it may be an hour: the news must not wait for it).
  // A Tick whose execution was replaced while it ran (a webhook) leaves the wake fields to the new one.
  let waitSeconds = chosen;
  run = await updateRun(deps.runs, run.runId, (r) => {
    const driving = input.executionName === undefined || r.execution === input.executionName;
    waitSeconds = driving && r.wakePending && !done ? 1 : chosen;
    return {
      ...r,
      ticks: driving ? r.ticks + 1 : r.ticks,
      waitSeconds,
      updatedAt: deps.now(),
      ...(driving ? { wakePending: false, waiting: done ? null : (input.executionName ?? null) } : {}),
    };
  });
  deps.metric(
    'MinutesWithoutProgress',
    Math.floor(Math.max(0, ...all.map((p) => stalledFor(p, deps.now()))) / 60_000),
  );
  const counts = { pending: 0, submitting: 0, active: 0, collecting: 0, done: 0 };
  for (const p of all) counts[p.status] += 1;
  deps.log('tick', { runId: run.runId, ...counts, waitSeconds, runDone: done });
  return {
    done,
    waitSeconds,
    continueAsNew: !done && run.ticks >= deps.maxTicksPerExecution,
    superseded: false,
  };
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
  try {
    if (!part.fileId) {
      const fileId = await api.uploadFile(
        `${run.runId}.part-${String(part.part).padStart(5, '0')}.jsonl`,
        deps.blobs.read(keys.requests(part.part)),
      );
      part = await save({ ...part, fileId });
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
