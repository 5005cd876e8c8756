/**
 * The old space of Prepare and Settle (MB). What they hold live is bounded (a lane: under 100 MiB of heap
 * at 10 million records; Settle: one partition group), so a bounded old space keeps a step's peak RSS near
 * 200 MiB whatever the dataset, instead of V8 letting garbage pile up towards the function's memory; it
 * leaves room for records of up to `maxRecordBytes` (10 MiB by default). See BENCHMARKS.md. A module of its
 * own, without the CDK, so that the benchmarks run their step processes with it too.
 */
export const STEP_OLD_SPACE_MB = 160;
