import { describe, expect, it } from 'vitest';
import {
  addCounts,
  type Counts,
  reconcile,
  withDuplicates,
  zeroCounts,
} from '../../functions/core/accounting';

const counts = (fields: Partial<Counts>): Counts => ({ ...zeroCounts(), ...fields });

describe('reconcile', () => {
  it('balances records that fan out, fail, or are skipped', () => {
    // 5 records: 1 invalid, 1 skipped, 1 hook failure, 2 that give 3 requests; 1 refused, 2 answered.
    const run = counts({
      records: 5,
      invalidRecords: 1,
      skippedRecords: 1,
      failedRecords: 1,
      requests: 3,
      refusedRequests: 1,
      submittedRequests: 2,
      settledRequests: 2,
      outputs: 1,
      errors: 4,
    });
    expect(reconcile(run)).toEqual({ expected: 6, accounted: 6, inFlight: 0, balanced: true });
  });

  it('is unbalanced while requests are still on OpenAI, and when a line is lost or doubled', () => {
    const run = counts({ records: 2, requests: 2, submittedRequests: 2, settledRequests: 2, outputs: 2 });
    expect(reconcile(run).balanced).toBe(true);
    expect(reconcile({ ...run, settledRequests: 1, outputs: 1 })).toMatchObject({
      inFlight: 1,
      balanced: false,
    });
    expect(reconcile({ ...run, outputs: 1 }).balanced).toBe(false);
    expect(reconcile({ ...run, outputs: 3 }).balanced).toBe(false);
  });

  it('adds the counts of resumed steps field by field', () => {
    expect(addCounts(counts({ records: 2, parts: 1 }), counts({ records: 3, errors: 1 }))).toEqual(
      counts({ records: 5, parts: 1, errors: 1 }),
    );
  });

  it('moves duplicates found after prepare from submitted to refused, each an error', () => {
    const before = counts({ records: 10, requests: 10, submittedRequests: 9, refusedRequests: 1, errors: 1 });
    expect(withDuplicates(before, 3)).toEqual(
      counts({ records: 10, requests: 10, submittedRequests: 6, refusedRequests: 4, errors: 4 }),
    );
  });
});
