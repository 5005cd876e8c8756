import { z } from 'zod';
import { CountsSchema } from './accounting';

/** Where a part is in its life: written, being sent, on OpenAI, being collected, finished. */
export const PART_STATUSES = ['pending', 'submitting', 'active', 'collecting', 'done'] as const;

/** Token usage summed over requests. */
export const TokenTotalsSchema = z.object({
  inputTokens: z.number().int().nonnegative(),
  outputTokens: z.number().int().nonnegative(),
  cachedTokens: z.number().int().nonnegative(),
});

/** Token usage summed over requests. */
export type TokenTotals = z.infer<typeof TokenTotalsSchema>;

/** An error OpenAI gave a whole batch (validation, token limit). */
export const BatchFailureSchema = z.object({
  code: z.string(),
  message: z.string(),
  line: z.number().int().nullable(),
});

/** An error OpenAI gave a whole batch. */
export type BatchFailure = z.infer<typeof BatchFailureSchema>;

/**
 * Where collecting a part stopped when its time budget ran out: the next call replays what was handled
 * (no hook, no write) and goes on from there, writing its lines to a file of its own (`chunk`).
 */
export const CollectCursorSchema = z.object({
  /** The number of the output and error files the next call writes. */
  chunk: z.number().int().positive(),
  /** Result lines handled, over the output file, then the error file. */
  results: z.number().int().nonnegative(),
  /** Requests handled in the pass over the request file (a failed batch, or results that never came). */
  requests: z.number().int().nonnegative(),
  /** Whether leftovers are sent again: fixed when collecting starts, so that every call agrees. */
  resubmit: z.boolean(),
  /** Whether requests of a cancelled batch are sent again (a failing run's collect), fixed likewise. */
  resendCancelled: z.boolean().default(false),
  /** What the calls so far wrote. */
  outputs: z.number().int().nonnegative(),
  errors: z.number().int().nonnegative(),
  skippedOutputs: z.number().int().nonnegative(),
});

/** Where collecting a part stopped. */
export type CollectCursor = z.infer<typeof CollectCursorSchema>;

/**
 * One part of a run: one OpenAI batch input file and the batch made from it. Its record in DynamoDB is
 * the truth the reconciler works from; `version` guards every update against a concurrent writer.
 */
export const PartSchema = z.object({
  part: z.number().int().nonnegative(),
  /** 0 for a part cut from the dataset; n for the n-th resubmission of leftovers. */
  generation: z.number().int().nonnegative(),
  /** Batches created for this part so far; a new one only after the last failed without cost. */
  attempt: z.number().int().nonnegative(),
  model: z.string(),
  requests: z.number().int().nonnegative(),
  bytes: z.number().int().nonnegative(),
  estimatedTokens: z.number().int().nonnegative(),
  status: z.enum(PART_STATUSES),
  fileId: z.string().nullable(),
  batchId: z.string().nullable(),
  batchStatus: z.string().nullable(),
  /** When the current attempt's intent was recorded (ms): a crash after it is recovered by metadata. */
  submittingSince: z.number().nullable(),
  /** Not to be sent before this time (ms): OpenAI's enqueued-token limit throttles it. */
  notBefore: z.number(),
  throttles: z.number().int().nonnegative(),
  /** OpenAI's request_counts as last seen. */
  completed: z.number().int().nonnegative(),
  failed: z.number().int().nonnegative(),
  /** When the batch last moved (status or counts), for the no-progress alarm. */
  lastProgressAt: z.number().nullable(),
  outputFileId: z.string().nullable(),
  errorFileId: z.string().nullable(),
  /** The batch's failure, when OpenAI failed it whole. */
  failure: z.array(BatchFailureSchema).nullable(),
  /** What collecting found: written outputs and errors, skipped outputs, requests sent again. */
  outputs: z.number().int().nonnegative(),
  errors: z.number().int().nonnegative(),
  skippedOutputs: z.number().int().nonnegative(),
  resubmitted: z.number().int().nonnegative(),
  /**
   * A prepared part waits here until Settle has taken from it the requests whose custom_id an earlier
   * record already used: Tick sends only parts that are not held.
   */
  held: z.boolean().default(false),
  /** The part number reserved for this part's resubmission, before collecting it (so a re-collect reuses it). */
  childPart: z.number().int().nonnegative().nullable(),
  /**
   * A resubmission part's shard: the one its first ancestor was prepared from (a prepared part's shard is
   * in its number). Null for a prepared part, and for a resubmission part from before this was kept.
   */
  originShard: z.number().int().nonnegative().nullable().default(null),
  usage: TokenTotalsSchema,
  /** Where collecting stopped, while a collect longer than one step goes on; null otherwise. */
  collected: CollectCursorSchema.nullable().default(null),
  /** Times its result files came back short and were read again (see collect's ShortDownloadError). */
  redownloads: z.number().int().nonnegative().default(0),
  version: z.number().int().nonnegative(),
});

/** One part of a run. */
export type Part = z.infer<typeof PartSchema>;

/** A new part as prepare or a resubmission writes it. */
export function newPart(
  fields: Pick<Part, 'part' | 'generation' | 'model' | 'requests' | 'bytes' | 'estimatedTokens'>,
): Part {
  return {
    ...fields,
    attempt: 0,
    status: 'pending',
    fileId: null,
    batchId: null,
    batchStatus: null,
    submittingSince: null,
    notBefore: 0,
    throttles: 0,
    completed: 0,
    failed: 0,
    lastProgressAt: null,
    outputFileId: null,
    errorFileId: null,
    failure: null,
    outputs: 0,
    errors: 0,
    skippedOutputs: 0,
    resubmitted: 0,
    held: false,
    childPart: null,
    originShard: null,
    usage: { inputTokens: 0, outputTokens: 0, cachedTokens: 0 },
    collected: null,
    redownloads: 0,
    version: 0,
  };
}

/** Where a run is. */
export const RUN_STATUSES = [
  'preparing',
  'running',
  'finalizing',
  'completed',
  'failed',
  'cancelled',
] as const;

/** Why a run waits for OpenAI: a transient outage, or a refusal of the account that a person must fix. */
export const BLOCKED_REASONS = ['openai_unavailable', 'key_refused', 'quota_exhausted'] as const;

/** Why a run waits for OpenAI. */
export type BlockedReason = (typeof BLOCKED_REASONS)[number];

/** The dataset a run reads: where, how large, and how it is cut into shards. */
export const DatasetSchema = z.object({
  /** The key or prefix (ending in `/`) the run was started on, in the run's bucket. */
  key: z.string(),
  /** Non-empty objects it holds (one for a key). */
  objects: z.number().int().positive(),
  bytes: z.number().int().nonnegative(),
  /** Shards it is cut into (see core/shards.ts); their plan is in S3 (`runKeys.plan`). */
  shards: z.number().int().positive(),
  /** The width in bytes of one line of the plan. */
  planWidth: z.number().int().positive(),
  /**
   * The width in bytes of one line of the object list (`runKeys.objectList`), which packs of small objects
   * are read by; 0 for a run registered before there was one (it has no packs).
   */
  objectWidth: z.number().int().nonnegative().default(0),
  /** Partitions the custom_id files are split into (see core/id-files.ts). */
  partitions: z.number().int().positive(),
  /** Lanes: shards prepared at once, each lane taking every `lanes`-th shard. */
  lanes: z.number().int().positive(),
});

/** The dataset a run reads. */
export type Dataset = z.infer<typeof DatasetSchema>;

/**
 * Where a prepare lane is (stored in S3 as `runKeys.lane(lane)`, written by that lane only): the shard it
 * prepares, the position it resumes at, and what it counted over all its shards so far.
 */
export const LaneCheckpointSchema = z.object({
  lane: z.number().int().nonnegative(),
  /** The shard being prepared; the lane is done when `done`. */
  shard: z.number().int().nonnegative(),
  /** The line and byte offset (of the shard's object, or of its inflated copy) the next step resumes at; null before the shard's first step. */
  position: z
    .object({ line: z.number().int().positive(), offset: z.number().int().nonnegative() })
    .nullable(),
  /**
   * A pack of objects (see core/shards.ts): the pack's lines before each of its objects reached so far, the
   * last being the object `position` is in. Empty for other shards, and before a pack's first step.
   */
  starts: z.array(z.number().int().nonnegative()).default([]),
  /** The k of the shard's next part (its number is shardPart(shard, k)). */
  nextPart: z.number().int().nonnegative(),
  /** The shard is gzip and its inflated copy (`runKeys.inflated(shard)`) is complete. */
  inflated: z.boolean(),
  counts: CountsSchema,
  estimatedTokens: z.number().int().nonnegative(),
  done: z.boolean(),
  /**
   * Lane 0 only: shard 0 was settled on its own as soon as it was prepared (its duplicate ids dropped, the
   * duplicates counted here), and its parts released to Tick while the other shards are still preparing.
   */
  firstShardSettled: z.boolean().default(false),
  /** Lane 0 only: shard 0's released parts were sent (as many as there was room for; Tick sends the rest). */
  firstPartsSent: z.boolean().default(false),
  /**
   * Lane 0 only: shard 0 held more ids than Settle takes in one group (a large gzip object is one shard),
   * so it was not settled on its own: Settle takes it with the rest, and its parts wait until then.
   */
  firstShardLeft: z.boolean().default(false),
});

/** Where a prepare lane is. */
export type LaneCheckpoint = z.infer<typeof LaneCheckpointSchema>;

/**
 * Where Settle is, once every lane is done: finding ids used more than once (partition by partition),
 * dropping the later uses from their parts, then releasing the parts to Tick.
 */
export const SettleStateSchema = z.object({
  stage: z.enum(['dedup', 'drop', 'release']),
  /** The next partition to look at (dedup). */
  partition: z.number().int().nonnegative(),
  /** The next part to drop from or release (drop, release); parts are taken in number order. */
  part: z.number().int().nonnegative(),
  /** Duplicates found so far. */
  duplicates: z.number().int().nonnegative(),
  /** Shard 0 was settled early (see LaneCheckpoint.firstShardSettled): its own duplicates are not found again. */
  firstShardSettled: z.boolean().default(false),
});

/** Where Settle is. */
export type SettleState = z.infer<typeof SettleStateSchema>;

/** The run record: what was asked, where it is, and what the steps counted so far. */
export const RunSchema = z.object({
  runId: z.string(),
  work: z.string(),
  bucket: z.string(),
  dataset: DatasetSchema,
  datasetHash: z.string(),
  status: z.enum(RUN_STATUSES),
  createdAt: z.number(),
  updatedAt: z.number(),
  prepared: z.boolean(),
  /** The number the next resubmission part gets (from shards * SHARD_PART_SPAN up). */
  nextPart: z.number().int().nonnegative(),
  /** Settle's progress once all lanes are done; null before. */
  settle: SettleStateSchema.nullable().default(null),
  /** Counts of prepare (records, refused requests, ...); parts hold the rest. */
  counts: CountsSchema,
  estimatedTokens: z.number().int().nonnegative(),
  estimatedCostUsd: z.number().nullable(),
  /** Ticks run by the current execution, to hand over before the history limit. */
  ticks: z.number().int().nonnegative(),
  /** The last wait the reconciler chose (s). */
  waitSeconds: z.number().int().nonnegative(),
  error: z.string().nullable(),
  /** Set by `openai-batch cancel`: Tick cancels the batches, sends nothing more, and the run ends cancelled. */
  cancelRequested: z.boolean(),
  /** The name of the execution driving the run now (it changes when a run continues in a new one). */
  execution: z.string(),
  /**
   * The execution now in its Wait state, set by Tick as it ends and cleared as the next one starts: a
   * webhook may replace that execution with a new one, so that the run's next Tick happens now.
   */
  waiting: z.string().nullable().default(null),
  /** A webhook arrived while a Tick ran: the next Tick comes a second later instead of after its wait. */
  wakePending: z.boolean().default(false),
  /** Set by MarkFailed while it winds a failing run down (cancels and collects its batches); then null. */
  failing: z
    .object({
      error: z.string(),
      since: z.number(),
      /** Calls in a row whose wind-down stopped on an error other than OpenAI's (S3, DynamoDB, a bug). */
      stalls: z.number().int().nonnegative().default(0),
    })
    .nullable()
    .default(null),
  /** The execution driving the run and when its first Tick ran (ms), to hand over long before its timeout. */
  executionSince: z.object({ name: z.string(), at: z.number() }).nullable().default(null),
  /**
   * Why the run cannot reach OpenAI now (an outage, a refused key, an exhausted quota), since when: the run
   * waits and goes on by itself once OpenAI answers. Null while OpenAI answers.
   */
  blocked: z
    .object({
      reason: z.enum(BLOCKED_REASONS),
      message: z.string(),
      /** When the condition was first seen (ms). */
      since: z.number(),
    })
    .nullable()
    .default(null),
  version: z.number().int().nonnegative(),
});

/** The run record. */
export type Run = z.infer<typeof RunSchema>;

/** True for a run's intermediate objects (request files, checkpoints), which a lifecycle rule may expire. */
export function isIntermediateKey(key: string): boolean {
  return /^runs\/[^/]+\/(requests|state)\//.test(key);
}

const partFile = (part: number, chunk: number) =>
  `part-${String(part).padStart(5, '0')}${chunk === 0 ? '' : `-${String(chunk).padStart(4, '0')}`}.jsonl`;

/** The S3 keys of a run. */
export const runKeys = (runId: string) => ({
  prefix: `runs/${runId}/`,
  requests: (part: number) => `runs/${runId}/requests/part-${String(part).padStart(5, '0')}.jsonl`,
  /** A part's lines file as written before its entries named the ids: dataset line numbers only. */
  lines: (part: number) => `runs/${runId}/requests/part-${String(part).padStart(5, '0')}.lines`,
  /**
   * A part's lines file: each request's dataset line and custom_id (`partLine`). A new name, so that code
   * from before it, which reads `.lines` for numbers only, finds no file and fails rather than misreads.
   */
  entries: (part: number) => `runs/${runId}/requests/part-${String(part).padStart(5, '0')}.entries`,
  /** A part's outputs; a collect that took several steps writes one file a step (`chunk` 1, 2, ...). */
  outputs: (part: number, chunk = 0) => `runs/${runId}/outputs/${partFile(part, chunk)}`,
  /** A part's errors, one file a collect step like its outputs. */
  errors: (part: number, chunk = 0) => `runs/${runId}/errors/${partFile(part, chunk)}`,
  /** An image an images answer carried (`<custom_id>-<n>.png`), named by `imageName` in images.ts. */
  images: (name: string) => `runs/${runId}/images/${name}`,
  /**
   * Errors found by the prepare step that started at this shard and line (bad lines, refused requests):
   * named by where the step started, so a step run again overwrites its own file.
   */
  prepareErrors: (shard: number, line: number) =>
    `runs/${runId}/errors/prepare-${String(shard).padStart(6, '0')}-${String(line).padStart(10, '0')}.jsonl`,
  /** The shard plan: one fixed-width line a shard (see core/shards.ts planCodec). */
  plan: `runs/${runId}/state/shards.plan`,
  /** The dataset's objects, one fixed-width line each (see core/shards.ts objectListCodec). */
  objectList: `runs/${runId}/state/objects.list`,
  /** Where each object of a pack starts (see core/shards.ts PackStartsSchema), once the pack is prepared. */
  packStarts: (shard: number) => `runs/${runId}/state/packs/${shard}.json`,
  /** A prepare lane's checkpoint. */
  lane: (lane: number) => `runs/${runId}/state/lanes/${lane}.json`,
  /** Newline bytes in [0, shard.start) of a shard's object, once known (a decimal number). */
  newlinesBefore: (shard: number) => `runs/${runId}/state/newlines/${shard}`,
  /** Newline bytes in a shard's own range [start, end) (a decimal number), once counted. */
  newlinesIn: (shard: number) => `runs/${runId}/state/newlines-in/${shard}`,
  /** A gzip shard's content, inflated once so that later steps resume it by byte offset. */
  inflated: (shard: number) => `runs/${runId}/state/inflated/${shard}.jsonl`,
  /** The id entries of the prepare step of a shard that started at `line`, its `chunk`-th file. */
  idFile: (shard: number, line: number, chunk: number) =>
    `runs/${runId}/state/ids/${String(shard).padStart(6, '0')}-${String(line).padStart(10, '0')}-${String(chunk).padStart(4, '0')}.ids`,
  idFiles: `runs/${runId}/state/ids/`,
  /**
   * Duplicates found in a partition group starting at `partition` (Settle), in sorted runs: the `run`-th,
   * in part order. A group's runs are the objects under `dropRuns(partition)`.
   */
  drops: (partition: number, run: number) =>
    `runs/${runId}/state/drops/${String(partition).padStart(5, '0')}-${String(run).padStart(6, '0')}.jsonl`,
  dropRuns: (partition: number) => `runs/${runId}/state/drops/${String(partition).padStart(5, '0')}-`,
  dropFiles: `runs/${runId}/state/drops/`,
  /** Shard 0's own duplicates, in sorted runs, when it was settled on its own (see settleFirstShard). */
  firstShardDrops: (run: number) => `runs/${runId}/state/drops-shard-0/${String(run).padStart(6, '0')}.jsonl`,
  firstShardDropFiles: `runs/${runId}/state/drops-shard-0/`,
  /** The duplicate_id errors of shard 0, found when it was settled on its own (see settleFirstShard). */
  firstShardDuplicateErrors: `runs/${runId}/errors/duplicates-shard-0.jsonl`,
  /** The duplicate_id errors Settle wrote for a partition group starting at `partition`. */
  duplicateErrors: (partition: number) =>
    `runs/${runId}/errors/duplicates-${String(partition).padStart(5, '0')}.jsonl`,
  summary: `runs/${runId}/summary.json`,
});
