import { z } from 'zod';

/**
 * Counts per stage of a run. Every dataset record and every request it fans out into ends in exactly one
 * of outputs, errors or skipped, which {@link reconcile} checks.
 */
export const CountsSchema = z.object({
  /** Non-blank dataset lines read (valid or not). */
  records: z.number().int().nonnegative(),
  /** Lines that could not be read as a record (bad JSON, bad UTF-8, too long, not an object). */
  invalidRecords: z.number().int().nonnegative(),
  /** Records the `upload` hook skipped by returning nothing. */
  skippedRecords: z.number().int().nonnegative(),
  /** Records the `upload` hook failed on, or that failed the work's record schema. */
  failedRecords: z.number().int().nonnegative(),
  /** Requests the hook returned, valid or not. */
  requests: z.number().int().nonnegative(),
  /** Requests refused before OpenAI (invalid item, duplicate id, too large, no model). */
  refusedRequests: z.number().int().nonnegative(),
  /** Requests placed in a part for OpenAI. */
  submittedRequests: z.number().int().nonnegative(),
  /** Requests that reached a final outcome from OpenAI (succeeded or failed, after resubmits). */
  settledRequests: z.number().int().nonnegative(),
  /** Lines written to outputs/. */
  outputs: z.number().int().nonnegative(),
  /** Lines written to errors/. */
  errors: z.number().int().nonnegative(),
  /** Results the `download` hook chose not to write (it returned nothing). */
  skippedOutputs: z.number().int().nonnegative(),
  /** Parts (batch input files) written. */
  parts: z.number().int().nonnegative(),
});

/** Counts per stage of a run. */
export type Counts = z.infer<typeof CountsSchema>;

/** All counts at zero. */
export function zeroCounts(): Counts {
  return {
    records: 0,
    invalidRecords: 0,
    skippedRecords: 0,
    failedRecords: 0,
    requests: 0,
    refusedRequests: 0,
    submittedRequests: 0,
    settledRequests: 0,
    outputs: 0,
    errors: 0,
    skippedOutputs: 0,
    parts: 0,
  };
}

/**
 * Counts after `n` requests placed in parts turned out to reuse an earlier custom_id: they are refused
 * instead of submitted, and each is an error.
 */
export function withDuplicates(counts: Counts, n: number): Counts {
  return {
    ...counts,
    submittedRequests: counts.submittedRequests - n,
    refusedRequests: counts.refusedRequests + n,
    errors: counts.errors + n,
  };
}

/** The sum of two sets of counts (a resumed step adds to what the earlier ones counted). */
export function addCounts(a: Counts, b: Counts): Counts {
  const sum = zeroCounts();
  for (const key of Object.keys(sum) as (keyof Counts)[]) sum[key] = a[key] + b[key];
  return sum;
}

/** The verdict of {@link reconcile}. */
export interface Reconciliation {
  /** Units that must each end somewhere: records, plus the extra requests of records that fanned out. */
  readonly expected: number;
  /** Units that ended: outputs + errors + skipped records + skipped outputs. */
  readonly accounted: number;
  /** Submitted requests with no outcome yet (still on OpenAI). */
  readonly inFlight: number;
  /** True when every unit ended exactly once. */
  readonly balanced: boolean;
}

/**
 * Checks that nothing was lost or written twice: each record is one unit, and a record that fanned out
 * into k requests counts k. Units end as an output line, an error line, or a deliberate skip.
 */
export function reconcile(counts: Counts): Reconciliation {
  const recordsWithRequests =
    counts.records - counts.invalidRecords - counts.skippedRecords - counts.failedRecords;
  const expected = counts.records + Math.max(0, counts.requests - recordsWithRequests);
  const accounted = counts.outputs + counts.errors + counts.skippedRecords + counts.skippedOutputs;
  const inFlight = counts.submittedRequests - counts.settledRequests;
  return { expected, accounted, inFlight, balanced: expected === accounted && inFlight === 0 };
}
