import { createHash } from 'node:crypto';
import { zeroCounts } from '../core/accounting';
import { datasetLocation } from '../core/dataset-location';
import { ConfigError, DatasetError } from '../core/errors';
import { type BlobInfo, ConflictError } from '../core/ports';
import { type Run, runKeys } from '../core/run';
import type { StepDeps } from './deps';
import { WIND_DOWN_MS } from './fail';
import { markIntermediatesEnded, markIntermediatesRunning } from './intermediates';

/** A dataset that this work already processed (or is processing) under another run. */
export class DuplicateDatasetError extends Error {
  override readonly name = 'DuplicateDatasetError';
  constructor(
    readonly holder: string,
    readonly holderStatus: string,
    /** The run that was to be resumed, when it is a resume that the holder stands in the way of. */
    readonly resuming: string | null = null,
  ) {
    super(
      resuming
        ? `Run ${resuming} cannot be resumed: since it failed, its dataset's content was taken by run ${holder} (${holderStatus}) of this work. ` +
            'Set allowSameDataset: true in the work to resume it anyway, or resume it after that run failed or was cancelled.'
        : `This dataset's content was already taken by run ${holder} (${holderStatus}) of this work. ` +
            'Set allowSameDataset: true in the work to run it again, or run it again after that run failed or was cancelled.',
    );
  }
}

/** Datasets up to this size are identified by the SHA-256 of their bytes; larger ones by their S3 ETags. */
const HASH_CONTENT_UP_TO = 1024 ** 3;

/** Objects a dataset prefix may hold: the run record keeps their list (DynamoDB items hold 400 KB). */
export const MAX_OBJECTS = 1000;

/** What Register answers: small, for the state. */
export interface Registered {
  readonly runId: string;
  readonly prepared: boolean;
  readonly objects: number;
}

/**
 * The object an S3 event's key names. S3's notifications to SNS, SQS and Lambda URL-encode keys ("red
 * flower.jpg" arrives as "red+flower.jpg"); its EventBridge events are documented without encoding, yet
 * AWS's own Powertools decodes them. Both are honoured: the key as it came when that object exists,
 * else its URL-decoded form when that one does.
 */
export async function eventKey(deps: StepDeps<unknown>, key: string): Promise<string> {
  if (key.endsWith('/') || (await deps.blobs.head(key))) return key;
  let decoded: string;
  try {
    decoded = decodeURIComponent(key.replace(/\+/g, ' '));
  } catch {
    return key; // not URL-encoding (a lone %): the key itself
  }
  if (decoded !== key && (await deps.blobs.head(decoded))) {
    deps.log('dataset key from the S3 event was URL-encoded', { runId: null });
    return decoded;
  }
  return key;
}

/** Keys a "No dataset" message names as what the user may have meant. */
const SUGGESTED_KEYS = 3;

/**
 * The objects a dataset names, exactly: the object at the key; or, for a key ending in `/`, every
 * non-empty object under that prefix, in key order. A key that is neither is refused, with the prefix
 * form suggested when objects are under it (`inputs/data` never takes `inputs/data-old.jsonl`).
 */
export async function datasetObjects(deps: StepDeps<unknown>, key: string): Promise<BlobInfo[]> {
  const where = `s3://${deps.bucket}/${key}`;
  if (!key.endsWith('/')) {
    const single = await deps.blobs.head(key);
    if (single && single.size === 0)
      throw new DatasetError(`The dataset ${where} is empty: there is nothing to run.`);
    if (single) return [single];
    throw new DatasetError(await noObjectMessage(deps, key));
  }
  const objects: BlobInfo[] = [];
  for await (const object of deps.blobs.list(key)) {
    if (object.size === 0 || object.key.endsWith('/')) continue;
    objects.push(object);
    if (objects.length > MAX_OBJECTS) {
      throw new DatasetError(
        `The prefix ${where} holds more than ${MAX_OBJECTS} objects; a run reads at most ${MAX_OBJECTS}. Combine them into fewer, larger files.`,
      );
    }
  }
  if (objects.length === 0)
    throw new DatasetError(`No dataset at ${where}: no such object, and no objects under it as a prefix.`);
  return objects;
}

/** Why a key names no object, with what the user may have meant: the prefix form, or keys like it. */
async function noObjectMessage(deps: StepDeps<unknown>, key: string): Promise<string> {
  const where = `s3://${deps.bucket}/${key}`;
  for await (const _ of deps.blobs.list(`${key}/`)) {
    return `No dataset at ${where}: no such object. Objects are under it as a prefix: give "${where}/" (with the trailing /) to read every object under it.`;
  }
  const like: string[] = [];
  for await (const object of deps.blobs.list(key)) {
    like.push(object.key);
    if (like.length === SUGGESTED_KEYS) break;
  }
  if (like.length > 0)
    return `No dataset at ${where}: no such object (keys that start with it: ${like.join(', ')}${like.length === SUGGESTED_KEYS ? ', ...' : ''}). Give a whole key, or a prefix ending in "/".`;
  return `No dataset at ${where}: no such object, and no objects under it as a prefix.`;
}

/**
 * The dataset's identity: the SHA-256 of its bytes (objects in key order) up to 1 GiB; beyond, of each
 * object's size and ETag, which S3 derives from the content, so that no step reads a huge dataset twice.
 */
export async function datasetHash(deps: StepDeps<unknown>, objects: readonly BlobInfo[]): Promise<string> {
  const hash = createHash('sha256');
  const total = objects.reduce((n, o) => n + o.size, 0);
  if (total <= HASH_CONTENT_UP_TO) {
    for (const object of objects) for await (const chunk of deps.blobs.read(object.key)) hash.update(chunk);
    return `sha256:${hash.digest('hex')}`;
  }
  for (const object of objects) hash.update(`${object.size}:${object.etag}\n`);
  return `etags:${hash.digest('hex')}`;
}

/**
 * Registers a run: finds the dataset's objects, identifies its content, and creates the run record,
 * claiming the dataset for the work in the same transaction unless the work allows the same dataset
 * twice. Two executions started together on one dataset: exactly one passes. Run again with the same
 * run id (a retry), it answers the existing run. With `resume`, it takes over an existing run (see
 * {@link resumeRun}).
 */
export async function register(
  deps: StepDeps<unknown>,
  input: {
    dataset: string | undefined;
    runId: string;
    resume: boolean;
    execution: string;
    /** The dataset is an S3 event's object key (autoStart). */
    fromS3Event?: boolean;
  },
): Promise<Registered> {
  const existing = await deps.runs.getRun(input.runId);
  if (existing) {
    const run = input.resume ? await resumeRun(deps, existing, input.execution) : existing;
    return { runId: run.runId, prepared: run.prepared, objects: run.objects.length };
  }
  if (input.resume)
    throw new ConfigError(`No run ${input.runId} to resume: there is no such run in this work.`);
  if (input.dataset === undefined)
    throw new ConfigError('dataset is required: "s3://bucket/key" or a key in the work\'s bucket.');
  const { key } = datasetLocation(input.dataset, deps.bucket);
  const objects = await datasetObjects(deps, input.fromS3Event ? await eventKey(deps, key) : key);
  const datasetHashValue = await datasetHash(deps, objects);
  const now = deps.now();
  const run: Run = {
    runId: input.runId,
    work: deps.work.settings.name,
    bucket: deps.bucket,
    objects: objects.map(({ key: k, size, etag }) => ({ key: k, size, etag })),
    datasetHash: datasetHashValue,
    status: 'preparing',
    createdAt: now,
    updatedAt: now,
    prepared: false,
    checkpoint: { object: 0, line: 1, offset: 0, gzip: false, nextPart: 0 },
    counts: zeroCounts(),
    estimatedTokens: 0,
    estimatedCostUsd: null,
    ticks: 0,
    waitSeconds: 0,
    error: null,
    cancelRequested: false,
    execution: input.execution,
    waiting: null,
    wakePending: false,
    blocked: null,
    executionSince: null,
    failing: null,
    version: 0,
  };
  const outcome = await deps.runs.createRun(run, !deps.work.settings.allowSameDataset);
  if (!outcome.created) throw new DuplicateDatasetError(outcome.holder.runId, outcome.holder.status);
  deps.log('run registered', {
    runId: run.runId,
    objects: objects.length,
    bytes: objects.reduce((n, o) => n + o.size, 0),
  });
  return { runId: run.runId, prepared: false, objects: objects.length };
}

/** How long after a wind-down's end (see WIND_DOWN_MS) its MarkFailed may still be marking the run. */
const RESUME_MARGIN_MS = 10 * 60_000;

/** How often resuming reads the run again when another writer changed it meanwhile. */
const RESUME_ATTEMPTS = 8;

/**
 * Hands an existing run to this execution. A running run (a hand-over, a webhook wake, a person) is just
 * taken over: the old execution's next Tick sees that it was replaced and ends. A failed run is revived:
 * running again (preparing when not prepared), without its error and blocked state, with its dataset
 * claimed again unless the work allows the same dataset (refused when another run holds the content now).
 * Its parts are left as they are: done parts stay done, parts keep their batches and attempts (a part
 * left submitting is found by metadata), so nothing is paid twice. A completed or cancelled run is refused.
 */
export async function resumeRun(deps: StepDeps<unknown>, found: Run, execution: string): Promise<Run> {
  let run = found;
  for (let attempt = 1; ; attempt++) {
    try {
      if (run.status === 'completed')
        throw new ConfigError(
          `Run ${run.runId} has completed: there is nothing to resume. Its results are under runs/${run.runId}/.`,
        );
      if (run.status === 'cancelled')
        throw new ConfigError(
          `Run ${run.runId} was cancelled: a cancelled run is not resumed. Start a new run of its dataset (the cancel released it).`,
        );
      if (run.failing && deps.now() - run.failing.since < WIND_DOWN_MS + RESUME_MARGIN_MS)
        throw new ConfigError(
          `Run ${run.runId} is winding down after a failure (${run.failing.error}): its batches are being cancelled and collected. Resume it once it has failed (openai-batch status shows it), within ${Math.ceil((WIND_DOWN_MS + RESUME_MARGIN_MS) / 60_000)} minutes.`,
        );
      // Running (a hand-over, a wake, a person), or a wind-down that never ended (its MarkFailed died).
      if (run.status !== 'failed')
        return await deps.runs.putRun({ ...run, ticks: 0, execution, failing: null });
      // A failed run's intermediate files are marked ended (they expire): keep them from here on, and
      // refuse, naming them, if some are gone already.
      await markIntermediatesRunning(deps, run.runId);
      const missing = await missingIntermediates(deps, run);
      if (missing.length > 0) {
        await markIntermediatesEnded(deps, run.runId);
        throw new ConfigError(
          `Run ${run.runId} cannot be resumed: files it still needs are gone (${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', ...' : ''}); a failed run's intermediate files expire 14 days after they were written. Start a new run of its dataset.`,
        );
      }
      const revived: Run = {
        ...run,
        failing: null,
        status: run.prepared ? 'running' : 'preparing',
        error: null,
        blocked: null,
        cancelRequested: false,
        execution,
        ticks: 0,
        waiting: null,
        wakePending: false,
        updatedAt: deps.now(),
      };
      const outcome = await deps.runs.reviveRun(revived, !deps.work.settings.allowSameDataset);
      if (!outcome.revived) await markIntermediatesEnded(deps, run.runId); // it stays failed: they expire
      if (!outcome.revived)
        throw new DuplicateDatasetError(outcome.holder.runId, outcome.holder.status, run.runId);
      deps.log('run resumed', { runId: run.runId, execution, failedWith: run.error });
      return outcome.revived;
    } catch (caught) {
      if (!(caught instanceof ConflictError) || attempt >= RESUME_ATTEMPTS) throw caught;
      const again = await deps.runs.getRun(run.runId);
      if (!again) throw caught;
      run = again;
    }
  }
}

/**
 * The intermediate files a failed run still needs that are gone: request files of unfinished parts, and
 * the checkpoint a prepare that did not finish resumes from.
 */
async function missingIntermediates(deps: StepDeps<unknown>, run: Run): Promise<string[]> {
  const keys = runKeys(run.runId);
  const needed: string[] = [];
  for (const part of await deps.runs.listParts(run.runId))
    if (part.status !== 'done') needed.push(keys.requests(part.part), keys.lines(part.part));
  const cp = run.checkpoint;
  if (!run.prepared && (cp.object > 0 || cp.line > 1)) needed.push(keys.ids(cp.object, cp.line));
  const missing: string[] = [];
  for (const key of needed) if (!(await deps.blobs.head(key))) missing.push(key);
  return missing;
}
