import { createHash } from 'node:crypto';
import { zeroCounts } from '../core/accounting';
import { datasetLocation } from '../core/dataset-location';
import { ConfigError, DatasetError } from '../core/errors';
import { partitionsOf } from '../core/id-files';
import { mapLimit } from '../core/limit';
import { isGzip } from '../core/lines';
import { type BlobInfo, ConflictError, readRange } from '../core/ports';
import { type Run, runKeys } from '../core/run';
import {
  MAX_PACK_OBJECTS,
  objectListCodec,
  planCodec,
  SHARD_PART_SPAN,
  type Shard,
  ShardPlanner,
} from '../core/shards';
import type { StepDeps } from './deps';
import { WIND_DOWN_MS } from './fail';
import { markIntermediatesEnded, markIntermediatesRunning } from './intermediates';
import { existingPartLinesKey, LazyJsonl } from './storage';

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

/** Objects a dataset prefix may hold: Register lists them twice and reads the first bytes of each. */
export const MAX_OBJECTS = 100_000;

/**
 * Datasets of at most this many bytes and objects are identified by the SHA-256 of their content; larger
 * ones by their objects' sizes and ETags (see {@link datasetHash}).
 */
export const HASH_CONTENT_UP_TO = { bytes: 1024 ** 3, objects: 1000 } as const;

/**
 * Objects whose first bytes are read at once, to see whether they are gzip: under the S3 client's 50
 * sockets. 100,000 objects take about a minute at some 20 ms a GET.
 */
const HEADS_IN_FLIGHT = 32;

/** What Register answers: small, for the state (the lanes are at most 40 numbers). */
export interface Registered {
  readonly runId: string;
  readonly prepared: boolean;
  readonly objects: number;
  /** The prepare lanes, 0 to dataset.lanes - 1: the Map state runs one Prepare loop for each. */
  readonly lanes: number[];
}

/** What Register answers for a run. */
function registered(run: Run): Registered {
  return {
    runId: run.runId,
    prepared: run.prepared,
    objects: run.dataset.objects,
    lanes: Array.from({ length: run.dataset.lanes }, (_, lane) => lane),
  };
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

/**
 * Why autoStart starts no run for an object whose key ends in `/`: read as a dataset, that key is a
 * prefix, and a run over the folder would race the runs of the objects uploaded into it (the same
 * records paid twice, under other dataset hashes). The rule already keeps out the empty ones (the S3
 * console's folders), so what gets here holds data someone should hear of: a DatasetError names it. It
 * is not ended quietly, as no step has an outcome that ends an execution without a run.
 */
function folderEventError(deps: StepDeps<unknown>, key: string): DatasetError {
  return new DatasetError(
    `No run for s3://${deps.bucket}/${key}: its key ends in "/", which names a folder, and autoStart starts a run for each object uploaded, never for a folder. To run what this object holds, copy it to a key that does not end in "/".`,
  );
}

/** Keys a "No dataset" message names as what the user may have meant. */
const SUGGESTED_KEYS = 3;

/**
 * The objects a dataset names, exactly: the object at the key; or, for a key ending in `/`, every
 * non-empty object under that prefix, in key order (at most `MAX_OBJECTS`). A key that is neither is
 * refused, with the prefix form suggested when objects are under it (`inputs/data` never takes
 * `inputs/data-old.jsonl`). Streams the listing: nothing is held but the count.
 */
export async function* datasetObjects(deps: StepDeps<unknown>, key: string): AsyncGenerator<BlobInfo> {
  const where = `s3://${deps.bucket}/${key}`;
  if (!key.endsWith('/')) {
    const single = await deps.blobs.head(key);
    if (single && single.size === 0)
      throw new DatasetError(`The dataset ${where} is empty: there is nothing to run.`);
    if (!single) throw new DatasetError(await noObjectMessage(deps, key));
    yield single;
    return;
  }
  let objects = 0;
  for await (const object of deps.blobs.list(key)) {
    if (object.size === 0 || object.key.endsWith('/')) continue;
    objects += 1;
    if (objects > MAX_OBJECTS) {
      throw new DatasetError(
        `The prefix ${where} holds more than ${MAX_OBJECTS.toLocaleString('en-US')} objects; a run reads at most ${MAX_OBJECTS.toLocaleString('en-US')}. Combine them into fewer, larger files, or start one run for each part of the prefix.`,
      );
    }
    yield object;
  }
  if (objects === 0)
    throw new DatasetError(`No dataset at ${where}: no such object, and no objects under it as a prefix.`);
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
 * What Register's first pass over the listing found: the counts, the plan's shape, and what the second
 * pass needs to write the plan without reading any object again.
 */
export interface DatasetScan {
  readonly objects: number;
  readonly bytes: number;
  /** The most shards the plan may have: as if no objects were packed (writePlan gives the count). */
  readonly maxShards: number;
  /** A width every line of the plan fits in (see planWidthBound). */
  readonly planWidth: number;
  /** The width of the object list's lines (see objectListCodec). */
  readonly objectWidth: number;
  /** The indexes of the objects whose content is gzip. */
  readonly gzip: ReadonlySet<number>;
  /** The bytes of those gzip objects, as stored (compressed). */
  readonly gzipBytes: number;
  /** SHA-256 of every object's size and ETag, in key order: the ETag form of the hash, and what tells the second pass that the listing did not change. */
  readonly etags: string;
  /** The objects themselves when there are at most HASH_CONTENT_UP_TO.objects of them (else null: listed again). */
  readonly listed: readonly BlobInfo[] | null;
}

/**
 * True when the object's first bytes are gzip's magic number (1f 8b). Reads those two bytes alone (a
 * ranged GET: Register sends one an object, up to 100,000), and only the version listed (`etag`).
 */
async function startsWithGzip(deps: StepDeps<unknown>, key: string, etag: string): Promise<boolean> {
  return isGzip(await readRange(deps.blobs, key, 0, 2, etag));
}

/**
 * A width the plan lines of an object's shards fit in, whatever its shard numbers: the widest of its
 * lines has the largest start (at most its size, in digits), `false` and the most objects a pack holds;
 * the shard number is counted as `shardDigits` digits (those of the dataset's last shard). An upper bound,
 * so that it is known before the first bytes of the objects are (they are read concurrently), without the
 * objects held.
 */
function planWidthBound(object: BlobInfo, index: number, shardDigits: number): number {
  const widest: Shard = {
    shard: 0,
    object: index,
    key: object.key,
    size: object.size,
    etag: object.etag,
    start: object.size,
    end: object.size,
    gzip: false,
    objects: MAX_PACK_OBJECTS,
  };
  return Buffer.byteLength(JSON.stringify(widest)) - 1 + shardDigits + 1;
}

/**
 * Register's first pass over the dataset's listing: counts objects, bytes and shards, and the plan's line
 * width; reads the first bytes of every object, a few at once: a gzip object is one shard, and Prepare
 * takes a shard's `gzip` as the truth (it inflates a gzip shard first), so it must be known for small
 * objects too, not only for the large ones that would otherwise be split. Holds the gzip objects'
 * indexes, and the list itself only while it is short enough to be hashed by content.
 */
export async function scanDataset(deps: StepDeps<unknown>, key: string): Promise<DatasetScan> {
  const { shardBytes } = deps.work.settings;
  const etags = createHash('sha256');
  const gzip = new Set<number>();
  let listed: BlobInfo[] | null = [];
  let objects = 0;
  let bytes = 0;
  let shards = 0;
  let gzipBytes = 0;
  let width = 0; // counting the shard number as one digit
  let objectWidth = 0;
  const inFlight = new Set<Promise<void>>();
  let failed: { error: unknown } | null = null;
  for await (const object of datasetObjects(deps, key)) {
    const index = objects++;
    bytes += object.size;
    etags.update(`${object.size}:${object.etag}\n`);
    width = Math.max(width, planWidthBound(object, index, 1));
    objectWidth = Math.max(objectWidth, objectListCodec.widthOf(object));
    if (listed && listed.length < HASH_CONTENT_UP_TO.objects) listed.push(object);
    else listed = null;
    const reading: Promise<void> = startsWithGzip(deps, object.key, object.etag)
      .then(
        (isGzipped) => {
          if (isGzipped) {
            gzip.add(index);
            gzipBytes += object.size;
          }
          shards += isGzipped || object.size <= shardBytes ? 1 : Math.ceil(object.size / shardBytes);
        },
        (error: unknown) => {
          failed ??= { error };
        },
      )
      .finally(() => inFlight.delete(reading));
    inFlight.add(reading);
    if (inFlight.size >= HEADS_IN_FLIGHT) await Promise.race(inFlight);
    if (failed) break;
  }
  await Promise.all(inFlight);
  if (failed) throw (failed as { error: unknown }).error;
  const planWidth = width - 1 + String(shards - 1).length;
  return {
    objects,
    bytes,
    maxShards: shards,
    planWidth,
    objectWidth,
    gzip,
    gzipBytes,
    etags: etags.digest('hex'),
    listed,
  };
}

/**
 * Register's second pass: writes the shard plan (`runKeys(runId).plan`, one fixed-width line a shard, see
 * planCodec) and the object list (`runKeys(runId).objectList`, see objectListCodec) from the listing again
 * (or the short list the scan kept), streamed; gives the number of shards. A listing that is not the one
 * scanned (objects added, removed or rewritten in between) is refused, and both deleted.
 */
export async function writePlan(
  deps: StepDeps<unknown>,
  runId: string,
  key: string,
  scan: DatasetScan,
): Promise<number> {
  const keys = runKeys(runId);
  const planner = new ShardPlanner(deps.work.settings.shardBytes);
  const objectList = new LazyJsonl(deps.blobs, keys.objectList);
  const etags = createHash('sha256');
  let objects = 0;
  let bytes = 0;
  let shards = 0;
  const changed = () =>
    new DatasetError(
      `The dataset s3://${deps.bucket}/${key} changed while the run was registered (objects were added, removed or rewritten): start the run again once it is complete.`,
    );
  async function* lines(): AsyncGenerator<Uint8Array> {
    let batch = '';
    const add = (planned: readonly Shard[]) => {
      for (const shard of planned) {
        shards += 1;
        const line = planCodec.fitted(shard, scan.planWidth);
        if (line === null) throw changed();
        batch += line;
      }
    };
    for await (const object of scan.listed ?? datasetObjects(deps, key)) {
      const index = objects++;
      bytes += object.size;
      etags.update(`${object.size}:${object.etag}\n`);
      const planned = { ...object, gzip: scan.gzip.has(index) };
      const listed = objectListCodec.fitted(planned, scan.objectWidth);
      if (listed === null) throw changed();
      await objectList.write(listed.slice(0, -1));
      add(planner.add(planned));
      if (batch.length >= 64 * 1024) {
        yield Buffer.from(batch);
        batch = '';
      }
    }
    add(planner.finish());
    if (batch.length > 0) yield Buffer.from(batch);
  }
  try {
    await deps.blobs.write(keys.plan, lines());
    await objectList.close();
  } catch (caught) {
    await objectList.close().catch(() => {});
    await deps.blobs.delete([keys.plan, keys.objectList]);
    throw caught;
  }
  if (
    objects !== scan.objects ||
    bytes !== scan.bytes ||
    shards > scan.maxShards ||
    etags.digest('hex') !== scan.etags
  ) {
    await deps.blobs.delete([keys.plan, keys.objectList]);
    throw changed();
  }
  return shards;
}

/**
 * The dataset's identity: the SHA-256 of its bytes (objects in key order) when it holds at most 1 GiB in
 * at most 1,000 objects; beyond either, the SHA-256 of each object's size and ETag (which S3 derives from
 * the content). Reading the content means one GET an object: 100,000 of them would take Register many
 * minutes, and a huge dataset would be read twice (once here, once by Prepare).
 */
export async function datasetHash(deps: StepDeps<unknown>, scan: DatasetScan): Promise<string> {
  if (!scan.listed || !hashesContent(scan.objects, scan.bytes)) return `etags:${scan.etags}`;
  const hash = createHash('sha256');
  // Each object as listed: its content hashed is the version the plan's sizes and ETags describe.
  for (const object of scan.listed)
    for await (const chunk of deps.blobs.read(object.key, 0, object.etag)) hash.update(chunk);
  return `sha256:${hash.digest('hex')}`;
}

/** Whether a dataset of this many objects and bytes is identified by its content (else by its ETags). */
export function hashesContent(objects: number, bytes: number): boolean {
  return objects <= HASH_CONTENT_UP_TO.objects && bytes <= HASH_CONTENT_UP_TO.bytes;
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
  if (existing) return registered(input.resume ? await resumeRun(deps, existing, input.execution) : existing);
  if (input.resume)
    throw new ConfigError(`No run ${input.runId} to resume: there is no such run in this work.`);
  if (input.dataset === undefined)
    throw new ConfigError('dataset is required: "s3://bucket/key" or a key in the work\'s bucket.');
  const { key: given } = datasetLocation(input.dataset, deps.bucket);
  if (input.fromS3Event && given.endsWith('/')) throw folderEventError(deps, given);
  const key = input.fromS3Event ? await eventKey(deps, given) : given;
  const scan = await scanDataset(deps, key);
  const datasetHashValue = await datasetHash(deps, scan);
  const shards = await writePlan(deps, input.runId, key, scan);
  const now = deps.now();
  const run: Run = {
    runId: input.runId,
    work: deps.work.settings.name,
    bucket: deps.bucket,
    dataset: {
      key,
      objects: scan.objects,
      bytes: scan.bytes,
      shards,
      planWidth: scan.planWidth,
      objectWidth: scan.objectWidth,
      partitions: partitionsOf(scan),
      lanes: Math.min(deps.work.settings.prepareConcurrency, shards),
    },
    datasetHash: datasetHashValue,
    status: 'preparing',
    createdAt: now,
    updatedAt: now,
    prepared: false,
    nextPart: shards * SHARD_PART_SPAN,
    settle: null,
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
  if (!outcome.created) {
    // No run will read them, and they would never expire.
    await deps.blobs.delete([runKeys(run.runId).plan, runKeys(run.runId).objectList]);
    throw new DuplicateDatasetError(outcome.holder.runId, outcome.holder.status);
  }
  deps.log('run registered', {
    runId: run.runId,
    objects: scan.objects,
    bytes: scan.bytes,
    shards,
    lanes: run.dataset.lanes,
  });
  return registered(run);
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
      // refuse, naming them, if some are gone already. A resume that ends short of reviving the run
      // (refused, or failed on the way) marks them ended again: a failed run's files expire.
      await markIntermediatesRunning(deps, run.runId);
      const revived = await reviveOrEnd(deps, run, execution, attempt < RESUME_ATTEMPTS);
      deps.log('run resumed', { runId: run.runId, execution, failedWith: run.error });
      return revived;
    } catch (caught) {
      if (!(caught instanceof ConflictError) || attempt >= RESUME_ATTEMPTS) throw caught;
      const again = await deps.runs.getRun(run.runId);
      if (!again) throw caught;
      run = again;
    }
  }
}

/**
 * Revives a failed run whose files are marked running again (see resumeRun); marks them ended again when
 * it does not, unless `retrying` a conflict (the caller reads the run again and marks them running).
 */
async function reviveOrEnd(
  deps: StepDeps<unknown>,
  run: Run,
  execution: string,
  retrying: boolean,
): Promise<Run> {
  try {
    const missing = await missingIntermediates(deps, run);
    if (missing.length > 0) {
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
    if (!outcome.revived)
      throw new DuplicateDatasetError(outcome.holder.runId, outcome.holder.status, run.runId);
    return outcome.revived;
  } catch (caught) {
    // It stays failed: its files expire (best effort: the resume's own error is the one to tell).
    if (!(caught instanceof ConflictError && retrying))
      await endUnlessRevived(deps, run.runId).catch(() => {});
    throw caught;
  }
}

/**
 * Marks a run's files ended again after a resume that did not revive it, unless another resume did
 * meanwhile (a second start of the same resume): the run is read before, and again after, since marking
 * takes a while; revived in between, its files are marked running again.
 */
async function endUnlessRevived(deps: StepDeps<unknown>, runId: string): Promise<void> {
  if ((await deps.runs.getRun(runId))?.status !== 'failed') return;
  await markIntermediatesEnded(deps, runId);
  if ((await deps.runs.getRun(runId))?.status !== 'failed') await markIntermediatesRunning(deps, runId);
}

/** Parts whose files a resume checks at once. */
const CHECKS_IN_FLIGHT = 16;

/**
 * The intermediate files a failed run still needs that are gone: request files of unfinished parts, and,
 * when it was not prepared, the shard plan its lanes read. The plan is the oldest of a run's state
 * objects (Register writes it before any lane starts), so it is the first the lifecycle rule expires.
 * Lane checkpoints may be missing: a lane that never started has none.
 */
async function missingIntermediates(deps: StepDeps<unknown>, run: Run): Promise<string[]> {
  const keys = runKeys(run.runId);
  const gone = async (key: string) => !(await deps.blobs.head(key));
  const unfinished = (await deps.runs.listParts(run.runId)).filter((part) => part.status !== 'done');
  // A few parts at a time (a failed run may have thousands unfinished), named in part order.
  const missingOf = await mapLimit(unfinished, CHECKS_IN_FLIGHT, async (part) => {
    const missing: string[] = [];
    if (await gone(keys.requests(part.part))) missing.push(keys.requests(part.part));
    // Either lines file will do: looked for once, the look being the check.
    if (!(await existingPartLinesKey(deps.blobs, run.runId, part.part)))
      missing.push(keys.entries(part.part));
    return missing;
  });
  const missing = missingOf.flat();
  if (!run.prepared && (await gone(keys.plan))) missing.push(keys.plan);
  // Packs of objects are read by their list (an older run has none).
  if (!run.prepared && run.dataset.objectWidth > 0 && (await gone(keys.objectList)))
    missing.push(keys.objectList);
  return missing;
}
