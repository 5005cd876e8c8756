/**
 * The old space of Prepare and Settle (MB). What they hold live is bounded (a lane: under 100 MiB of heap
 * at 10 million records; Settle: one partition group), so a bounded old space keeps a step's peak RSS near
 * 200 MiB whatever the dataset, instead of V8 letting garbage pile up towards the function's memory; it
 * leaves room for records of up to `maxRecordBytes` (10 MiB by default). See BENCHMARKS.md. A module of its
 * own, without the CDK, so that the benchmarks run their step processes with it too.
 */
export const STEP_OLD_SPACE_MB = 160;

/**
 * The young generation's semi-space of Prepare and Settle (MB). Node 24, the functions' runtime, lets each
 * of its three semi-spaces grow to 64 MB by default, where Node 22 keeps 16 (beside a 160 MB old space, a
 * heap limit of 352 MB against 208). By that alone a lane preparing a million short records peaked at 279
 * to 291 MiB of RSS on Node 24 against 176 on Node 22; with 16 MB, 186 to 197 MiB, in the same time
 * (bench/scale.ts).
 *
 * Heap flags on the command line win over NODE_OPTIONS, and Lambda's start script may pass its own there
 * (the nodejs18.x image's passed a tenth of the function's memory as new space and most of the rest as old
 * space). So these functions start through a wrapper (infra/heap-wrapper.ts) that removes from the command
 * line each heap flag their NODE_OPTIONS sets. Each function logs `node heap` at its cold start with the
 * limit in effect, the flags it runs with and those the wrapper removed.
 */
export const STEP_SEMI_SPACE_MB = 16;

/**
 * The largest `maxRecordBytes` Prepare keeps its old-space bound for. A record is held several times over
 * while it becomes a request (its text, the parsed value, the request's JSON): on Node 24 under both
 * bounds a record of 40 MiB went through and one of 60 MiB ran out of memory. A work that reads longer
 * records leaves Prepare's old space to V8 (the function's memory), with the semi-space bound only.
 */
export const STEP_OLD_SPACE_MAX_RECORD_BYTES = 24 * 1024 * 1024;

/** The V8 heap flags Prepare and Settle run with: their NODE_OPTIONS on AWS, and the benchmarks' steps. */
export const STEP_HEAP_FLAGS: readonly string[] = [
  `--max-old-space-size=${STEP_OLD_SPACE_MB}`,
  `--max-semi-space-size=${STEP_SEMI_SPACE_MB}`,
];

/**
 * The young generation bounded alone, the old space left to V8: Tick and MarkFailed (the functions that
 * collect results), and Prepare for records too long for its old-space bound. The collect path at 300 MB on
 * Node 24 peaked at 252 to 257 MiB of RSS, 228 to 229 with it, in the same CPU a record (bench/paths.ts).
 */
export const SEMI_SPACE_FLAGS: readonly string[] = [`--max-semi-space-size=${STEP_SEMI_SPACE_MB}`];

/**
 * The V8 heap flags of a state's function, by the state's name (the stack's NODE_OPTIONS, and the
 * benchmarks' step processes): Prepare's old-space bound only while the work's records fit in it.
 */
export function heapFlagsOf(state: string, maxRecordBytes: number): readonly string[] {
  if (state === 'Settle') return STEP_HEAP_FLAGS;
  if (state === 'Prepare')
    return maxRecordBytes <= STEP_OLD_SPACE_MAX_RECORD_BYTES ? STEP_HEAP_FLAGS : SEMI_SPACE_FLAGS;
  if (state === 'Tick' || state === 'MarkFailed') return SEMI_SPACE_FLAGS;
  return [];
}

/**
 * The variable in which the start wrapper (infra/heap-wrapper.ts) says which heap flags it removed from the
 * runtime's command line, space-separated ('' for none; unset where the function did not start through it).
 */
export const DROPPED_HEAP_FLAGS_ENV = 'OPENAI_BATCH_DROPPED_HEAP_FLAGS';
