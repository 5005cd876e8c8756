import { addCounts } from '../core/accounting';
import { CostLimitError, DatasetError, InvariantError } from '../core/errors';
import { IdRegistry } from '../core/ids';
import { type PrepareStart, prepareDataset } from '../core/prepare';
import { costOf } from '../core/prices';
import { newPart, type PrepareCheckpoint, runKeys } from '../core/run';
import type { StepDeps } from './deps';
import { runOf } from './runs';
import { LazyJsonl, readAll, StoredParts, writeAll } from './storage';

/** US dollars for a person: cents, or four significant digits below a cent. */
export function usd(amount: number): string {
  return amount >= 0.01 || amount === 0 ? `$${amount.toFixed(2)}` : `$${amount.toPrecision(4)}`;
}

/**
 * Prepares a run's dataset into part files, object by object, for as long as its time budget allows,
 * then checkpoints (position, part numbers, counts and the custom_id registry together) and returns;
 * the state machine calls it again until `prepared`. A step that dies is run again from its checkpoint
 * and rewrites the same files. Once all is read, the cost is estimated and checked against `maxCostUsd`
 * before anything is sent to OpenAI.
 */
export async function prepare<R>(
  deps: StepDeps<R>,
  input: { runId: string },
): Promise<{ prepared: boolean }> {
  const started = deps.now();
  const outOfTime = () => deps.now() - started > deps.budgetMs;
  // A step reads at least one record before it looks at the clock, so that every step progresses.
  let progressed = false;
  const shouldPause = () => {
    const pause = progressed && outOfTime();
    progressed = true;
    return pause;
  };
  let run = await runOf(deps.runs, input.runId);
  const keys = runKeys(run.runId);
  while (!run.prepared && run.checkpoint.object < run.objects.length) {
    if (progressed && outOfTime()) return { prepared: false };
    const cp = run.checkpoint;
    const object = run.objects[cp.object];
    if (!object) throw new InvariantError(`run ${run.runId} has no object ${cp.object}`);
    const resuming = cp.line > 1;
    const ids =
      cp.object === 0 && !resuming
        ? new IdRegistry()
        : IdRegistry.fromBytes(await readAll(deps.blobs, keys.ids(cp.object, cp.line)));
    const parts = new StoredParts(deps.blobs, run.runId);
    const errors = new LazyJsonl(deps.blobs, keys.prepareErrors(cp.object, cp.line));
    let start: PrepareStart = { firstPart: cp.nextPart };
    if (resuming)
      start = cp.gzip
        ? { ...start, skipLines: cp.line - 1 }
        : { ...start, position: { line: cp.line, offset: cp.offset } };
    const source =
      resuming && !cp.gzip ? deps.blobs.read(object.key, cp.offset) : deps.blobs.read(object.key);
    const result = await prepareDataset({ source, work: deps.work, ids, parts, errors, start, shouldPause });
    await errors.close();
    const next: PrepareCheckpoint = result.done
      ? {
          object: cp.object + 1,
          line: 1,
          offset: 0,
          gzip: false,
          nextPart: cp.nextPart + result.parts.length,
        }
      : {
          object: cp.object,
          line: result.next.line,
          offset: result.next.offset,
          gzip: result.gzip,
          nextPart: cp.nextPart + result.parts.length,
        };
    await writeAll(deps.blobs, keys.ids(next.object, next.line), ids.toBytes());
    await deps.runs.addParts(
      run.runId,
      result.parts.map((p) =>
        newPart({
          part: p.part,
          generation: 0,
          model: p.model,
          requests: p.requests,
          bytes: p.bytes,
          estimatedTokens: p.estimatedTokens,
        }),
      ),
    );
    run = await deps.runs.putRun({
      ...run,
      checkpoint: next,
      counts: addCounts(run.counts, result.counts),
      estimatedTokens: run.estimatedTokens + result.parts.reduce((n, p) => n + p.estimatedTokens, 0),
      updatedAt: deps.now(),
    });
    deps.log('prepare step', {
      runId: run.runId,
      object: cp.object,
      fromLine: cp.line,
      toLine: next.line,
      records: result.counts.records,
      parts: result.parts.length,
    });
  }
  if (!run.prepared) {
    if (run.counts.records === 0) {
      throw new DatasetError(
        `The dataset has no records: its ${run.objects.length} object(s) hold only blank lines.`,
      );
    }
    const parts = await deps.runs.listParts(run.runId);
    const expected = deps.work.settings.expectedOutputTokens;
    const estimate = costOf(
      parts.map((p) => ({
        model: p.model,
        inputTokens: p.estimatedTokens,
        outputTokens: p.requests * expected,
      })),
    );
    const max = deps.work.settings.maxCostUsd;
    run = await deps.runs.putRun({ ...run, estimatedCostUsd: estimate, updatedAt: deps.now() });
    if (max !== undefined && estimate !== null && estimate > max) {
      throw new CostLimitError(
        `The estimated cost of this run is ${usd(estimate)} (${run.estimatedTokens} input tokens and ${expected} output tokens a request at batch prices), above the work's maxCostUsd of ${usd(max)}. Nothing was sent to OpenAI.`,
        estimate,
        max,
      );
    }
    run = await deps.runs.putRun({ ...run, prepared: true, status: 'running', updatedAt: deps.now() });
  }
  return { prepared: true };
}
