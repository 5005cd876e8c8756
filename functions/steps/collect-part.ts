import { collectPart } from '../core/collect';
import type { BatchApi } from '../core/ports';
import { newPart, type Part, type Run, runKeys } from '../core/run';
import type { StepDeps } from './deps';
import { LazyJsonl, StoredParts } from './storage';

/** Collects a finished part into outputs, errors and its resubmission part (returned), then marks it done. */
export async function collect<R>(
  deps: StepDeps<R>,
  api: BatchApi,
  run: Run,
  part: Part,
  save: (p: Part) => Promise<Part | null>,
): Promise<Part | null> {
  const keys = runKeys(run.runId);
  const outputs = new LazyJsonl(deps.blobs, keys.outputs(part.part));
  const errors = new LazyJsonl(deps.blobs, keys.errors(part.part));
  const child = run.cancelRequested ? null : part.childPart;
  const resent = child === null ? null : new StoredParts(deps.blobs, run.runId);
  const result = await collectPart({
    work: deps.work,
    part,
    requests: () => deps.blobs.read(keys.requests(part.part)),
    lines: () => deps.blobs.read(keys.lines(part.part)),
    outputFile: part.outputFileId ? () => api.fileContent(part.outputFileId ?? '') : null,
    errorFile: part.errorFileId ? () => api.fileContent(part.errorFileId ?? '') : null,
    outputs,
    errors,
    resubmit: resent && child !== null ? { write: (json, line) => resent.writeRaw(child, json, line) } : null,
  });
  await Promise.all([
    outputs.close(),
    errors.close(),
    child === null ? undefined : resent?.close({ part: child }),
  ]);
  let resubmission: Part | null = null;
  if (child !== null && result.resubmitted > 0) {
    resubmission = newPart({
      part: child,
      generation: part.generation + 1,
      model: part.model,
      requests: result.resubmitted,
      bytes: 0,
      estimatedTokens: Math.ceil((part.estimatedTokens * result.resubmitted) / Math.max(1, part.requests)),
    });
    await deps.runs.addParts(run.runId, [resubmission]);
  }
  await save({
    ...part,
    status: 'done',
    outputs: result.outputs,
    errors: result.errors,
    skippedOutputs: result.skippedOutputs,
    resubmitted: result.resubmitted,
    usage: result.usage,
  });
  deps.log('collected', {
    runId: run.runId,
    part: part.part,
    outputs: result.outputs,
    errors: result.errors,
    resubmitted: result.resubmitted,
    malformed: result.malformed,
  });
  return resubmission;
}
