import type { BatchView } from './reconciler';
import type { Part, Run } from './run';

/** An object in a {@link BlobStore}. */
export interface BlobInfo {
  readonly key: string;
  readonly size: number;
  readonly etag: string;
}

/** Object storage, as the steps use it (S3 in the cloud, s3rver locally). */
export interface BlobStore {
  /**
   * The object's bytes from `start` on, opened when first read; with `end`, none from `end` on (one
   * ranged GET: a read left before the end of its body closes the connection, and the next request opens
   * another, with its TLS handshake). With `etag`, only that version of it: an object changed or removed
   * since (another ETag, or none) is a `DatasetError` naming it, before any byte is given.
   */
  read(key: string, start?: number, etag?: string, end?: number): AsyncIterable<Uint8Array>;
  /** Stores a stream as an object; resolves with its size in bytes. */
  write(key: string, body: AsyncIterable<Uint8Array>): Promise<number>;
  /** The object's size and ETag, or null when it does not exist. */
  head(key: string): Promise<BlobInfo | null>;
  /** Objects under a prefix, in key order. */
  list(prefix: string): AsyncIterable<BlobInfo>;
  /** Removes objects (missing ones are no error). */
  delete(keys: readonly string[]): Promise<void>;
  /**
   * Marks a run's intermediate object (an S3 object tag the lifecycle rule filters on): `running` ones
   * never expire, `ended` ones do. False when the object is gone (cleaned up, or expired).
   */
  markIntermediate(key: string, mark: IntermediateMark): Promise<boolean>;
}

/**
 * `length` bytes of an object from `start` (fewer when it ends first), by one GET of those bytes alone;
 * with `etag`, of that version only (see BlobStore.read).
 */
export async function readRange(
  blobs: BlobStore,
  key: string,
  start: number,
  length: number,
  etag?: string,
): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  let got = 0;
  if (length <= 0) return Buffer.alloc(0);
  // Cut here too: a store may give more than the range asked for.
  for await (const chunk of blobs.read(key, start, etag, start + length)) {
    chunks.push(chunk.length > length - got ? chunk.subarray(0, length - got) : chunk);
    got += chunks.at(-1)?.length ?? 0;
    if (got >= length) break;
  }
  return Buffer.concat(chunks);
}

/**
 * What a run's intermediate objects (request files, their line sidecars, checkpoints) are marked with:
 * `running` from their writing, `ended` once the run has ended. The bucket's lifecycle rule expires only
 * ended ones, so no object a running run still needs can expire, however long the run lasts.
 */
export type IntermediateMark = 'running' | 'ended';

/** What creating a batch sends. */
export interface CreateBatchInput {
  readonly fileId: string;
  readonly endpoint: string;
  readonly metadata: Record<string, string>;
}

/** The OpenAI Batch and Files API, as the steps use it. */
export interface BatchApi {
  /**
   * Uploads a batch input file; resolves with its file id. A failure to read `body` is thrown as itself
   * (not as the connection it broke), so that the caller tells its file's failure from OpenAI's.
   */
  uploadFile(filename: string, body: AsyncIterable<Uint8Array>): Promise<string>;
  /** Creates a batch once: never retried by the client, as a lost answer is found again by metadata. */
  createBatch(input: CreateBatchInput): Promise<BatchView>;
  getBatch(batchId: string): Promise<BatchView>;
  /** Batches created at or after `since` (Unix seconds), newest first. */
  recentBatches(since: number): Promise<BatchView[]>;
  cancelBatch(batchId: string): Promise<BatchView>;
  /** A file's bytes. */
  fileContent(fileId: string): AsyncIterable<Uint8Array>;
  /** Deletes a file; a file already gone is no error. */
  deleteFile(fileId: string): Promise<void>;
  /** Ids of files whose name starts with `prefix` (to clean up uploads whose answer was lost). */
  filesNamed(prefix: string): Promise<string[]>;
}

/** Who holds a dataset for a work. */
export interface DatasetClaim {
  readonly runId: string;
  readonly status: string;
}

/** The run table, as the steps use it (DynamoDB). Every update is conditional on the record's version. */
export interface RunStore {
  /**
   * Creates the run and, unless `allowSameDataset`, claims its dataset for the work in one transaction.
   * Resolves with the claim that stands in the way when another run holds the dataset.
   */
  createRun(
    run: Run,
    claimDataset: boolean,
  ): Promise<{ created: true } | { created: false; holder: DatasetClaim }>;
  getRun(runId: string): Promise<Run | null>;
  /**
   * Writes back a run that is resumed (`run`, already revived) when its version is still `run.version`,
   * and, when `claimDataset`, claims its dataset again in the same transaction: the claim may be free,
   * released (failed or cancelled) or this run's own. Resolves with the claim that stands in the way when
   * another run holds the dataset now; throws {@link ConflictError} when the run changed meanwhile.
   */
  reviveRun(
    run: Run,
    claimDataset: boolean,
  ): Promise<{ revived: Run } | { revived: null; holder: DatasetClaim }>;
  /** Replaces the run when its version is still `run.version`; the stored one gets version + 1. */
  putRun(run: Run): Promise<Run>;
  /** Marks the dataset claim with the run's final status (a failed or cancelled run releases it). */
  settleClaim(work: string, datasetHash: string, runId: string, status: string): Promise<void>;
  listParts(runId: string): Promise<Part[]>;
  /** Writes parts that are new, or pending and unchanged (a prepare step run again). */
  addParts(runId: string, parts: readonly Part[]): Promise<void>;
  /** Replaces a part when its version is still `part.version`; false when another writer got there first. */
  putPart(runId: string, part: Part): Promise<Part | null>;
  /** Runs of a work, newest first. */
  listRuns(work: string, limit: number): Promise<Run[]>;
  /** Remembers which run and part a batch belongs to: a webhook carries only the batch id. */
  recordBatch(batchId: string, runId: string, part: number): Promise<void>;
  /** The run and part of a batch this project created, or null. */
  findBatch(batchId: string): Promise<{ runId: string; part: number } | null>;
  /**
   * Records a webhook event id, kept until `expiresAtSeconds` (epoch seconds); false when it was
   * recorded before: the delivery is a replay or a retry of one already handled.
   */
  recordEvent(eventId: string, expiresAtSeconds: number): Promise<boolean>;
  /** Forgets an event recorded by a delivery that then failed, so that OpenAI's retry is handled. */
  forgetEvent(eventId: string): Promise<void>;
}

/** Thrown by a store when a conditional write lost to a concurrent writer. */
export class ConflictError extends Error {
  override readonly name = 'ConflictError';
}
