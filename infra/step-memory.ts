/**
 * The old space of Prepare and Settle (MB). What they hold live is bounded (a lane: under 100 MiB of heap
 * at 10 million records; Settle: one partition group), so a bounded old space keeps a step's peak RSS near
 * 200 MiB whatever the dataset, instead of V8 letting garbage pile up towards the function's memory; it
 * leaves room for records of up to `maxRecordBytes` (10 MiB by default). See BENCHMARKS.md. A module of its
 * own, without the CDK, so that the benchmarks run their step processes with it too.
 */
export const STEP_OLD_SPACE_MB = 160;

/**
 * The young generation's semi-space of Prepare and Settle (MB). Node 24, the functions' runtime, sizes it
 * from the heap's limit: beside a 160 MB old space it lets each of its three semi-spaces grow to 64 MB
 * (a heap limit of 352 MB, where Node 22 keeps 16 and 208). By that alone a lane preparing a million short
 * records peaked at 279 to 291 MiB of RSS on Node 24 against 176 on Node 22; with 16 MB, 186 to 197 MiB,
 * in the same time (bench/scale.ts).
 */
export const STEP_SEMI_SPACE_MB = 16;

/** The V8 heap flags Prepare and Settle run with: their NODE_OPTIONS on AWS, and the benchmarks' steps. */
export const STEP_HEAP_FLAGS: readonly string[] = [
  `--max-old-space-size=${STEP_OLD_SPACE_MB}`,
  `--max-semi-space-size=${STEP_SEMI_SPACE_MB}`,
];

/**
 * The V8 heap flags Tick and MarkFailed run with, the functions that collect results: the same young
 * generation as Prepare's, their old space left to V8. The collect path at 300 MB on Node 24 peaked at 252
 * to 257 MiB of RSS, 228 to 229 with it, in the same CPU a record (bench/paths.ts).
 */
export const COLLECT_HEAP_FLAGS: readonly string[] = [`--max-semi-space-size=${STEP_SEMI_SPACE_MB}`];
