import { collectPart, MAX_REDOWNLOADS, ShortDownloadError } from '../core/collect';
import type { BatchApi } from '../core/ports';
import { newPart, type Part, type Run, runKeys } from '../core/run';
import type { StepDeps } from './deps';
import { LazyJsonl, partLinesKey, ShardPlaces, StoredParts, shardOf } from './storage';

/** How a part is collected. */
export interface CollectOptions {
  /**
   * Asked before each result or request that may call a hook, once this call has handled one: true
   * stops the call there (the step's time is up), and the next call goes on where it stopped.
   */
  readonly shouldPause?: () => boolean;
  /** Send requests of a batch that was cancelled (`batch_cancelled`) again too (see collectPart). */
  readonly resendCancelled?: boolean;
}

/**
 * Collects a finished part into outputs, errors and its resubmission part (returned), then marks it done.
 * When `options.shouldPause` says the step's time is up (asked once a call has handled a result), the part stays
 * `collecting` with a cursor, and the next call goes on from there into output and error files of its
 * own; null is returned then. Each call's files are named by where it started, and a call that writes
 * nothing removes them, so that a call run again after a crash leaves each line once.
 */
export async function collect<R>(
  deps: StepDeps<R>,
  api: BatchApi,
  run: Run,
  part: Part,
  save: (p: Part) => Promise<Part | null>,
  options: CollectOptions = {},
): Promise<Part | null> {
  const keys = runKeys(run.runId);
  const from = part.collected;
  const chunk = from?.chunk ?? 0;
  const outputs = new LazyJsonl(deps.blobs, keys.outputs(part.part, chunk));
  const errors = new LazyJsonl(deps.blobs, keys.errors(part.part, chunk));
  // What is sent again is decided when collecting starts: every later call of the part agrees with it.
  const resubmitting = from ? from.resubmit : !run.cancelRequested;
  const resendCancelled = from ? from.resendCancelled : options.resendCancelled === true;
  const child = resubmitting ? part.childPart : null;
  const resent = child === null ? null : new StoredParts(deps.blobs, run.runId);
  const linesKey = await partLinesKey(deps.blobs, run.runId, part.part);
  // Errors name the dataset object and line of each request (the lines file numbers a pack's lines across it).
  const shard = shardOf(run, part);
  const located = shard === null ? null : await new ShardPlaces(deps.blobs, run).locator(shard);
  const result = await collectPart({
    work: deps.work,
    part,
    requests: () => deps.blobs.read(keys.requests(part.part)),
    lines: () => deps.blobs.read(linesKey),
    outputFile: part.outputFileId ? () => api.fileContent(part.outputFileId ?? '') : null,
    errorFile: part.errorFileId ? () => api.fileContent(part.errorFileId ?? '') : null,
    outputs,
    errors,
    resubmit:
      resent && child !== null ? { write: (json, line, id) => resent.writeRaw(child, json, line, id) } : null,
    images: {
      write: async (name, bytes) => {
        const key = keys.images(name);
        await deps.blobs.write(
          key,
          (async function* () {
            yield bytes;
          })(),
        );
        return key;
      },
    },
    from,
    resendCancelled,
    object: located?.kind === 'object' ? located.key : null,
    ...(located?.kind === 'pack' ? { place: located.place } : {}),
    ...(options.shouldPause ? { shouldPause: options.shouldPause } : {}),
    mayRedownload: part.redownloads < MAX_REDOWNLOADS,
  }).catch(async (caught: unknown) => {
    // Counted, so that files OpenAI itself wrote short are taken as they are after a few reads.
    if (caught instanceof ShortDownloadError) await save({ ...part, redownloads: part.redownloads + 1 });
    throw caught;
  });
  await Promise.all([
    outputs.close(),
    errors.close(),
    child === null ? undefined : resent?.close({ part: child }),
  ]);
  if (result.paused) {
    await save({ ...part, collected: result.paused });
    deps.log('collect paused', {
      runId: run.runId,
      part: part.part,
      chunk,
      outputs: result.outputs,
      errors: result.errors,
    });
    return null;
  }
  let resubmission: Part | null = null;
  if (child !== null && result.resubmitted > 0) {
    resubmission = {
      ...newPart({
        part: child,
        generation: part.generation + 1,
        model: part.model,
        requests: result.resubmitted,
        bytes: 0,
        estimatedTokens: Math.ceil((part.estimatedTokens * result.resubmitted) / Math.max(1, part.requests)),
      }),
      originShard: shard,
    };
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
    collected: null,
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
