import { describe, expect, it } from 'vitest';
import {
  admit,
  allDone,
  type BatchView,
  batchMetadata,
  FAILURE_BYTES,
  findOwnBatch,
  nextWait,
  observe,
  throttleDelayMs,
} from '../../functions/core/reconciler';
import { newPart, type Part } from '../../functions/core/run';

const part = (fields: Partial<Part> = {}): Part => ({
  ...newPart({ part: 0, generation: 0, model: 'm', requests: 10, bytes: 100, estimatedTokens: 1000 }),
  status: 'active',
  attempt: 1,
  batchId: 'batch_1',
  batchStatus: 'validating',
  ...fields,
});

const batch = (fields: Partial<BatchView> = {}): BatchView => ({
  id: 'batch_1',
  status: 'in_progress',
  total: 10,
  completed: 0,
  failed: 0,
  outputFileId: null,
  errorFileId: null,
  errors: [],
  metadata: {},
  createdAt: 0,
  ...fields,
});

const settings = {
  maxActiveBatches: 2,
  maxEnqueuedTokens: undefined,
  minPollSeconds: 30,
  maxPollSeconds: 900,
};

describe('observe', () => {
  it.each(['validating', 'in_progress', 'finalizing', 'cancelling'])(
    'keeps a %s batch active and records progress',
    (status) => {
      const seen = observe(part({ lastProgressAt: 5 }), batch({ status, completed: 3, failed: 1 }), 100);
      expect(seen).toMatchObject({
        status: 'active',
        batchStatus: status,
        completed: 3,
        failed: 1,
        lastProgressAt: 100,
      });
    },
  );

  it('keeps the time of last progress when nothing moved', () => {
    const seen = observe(
      part({ batchStatus: 'in_progress', completed: 3, lastProgressAt: 5 }),
      batch({ completed: 3 }),
      100,
    );
    expect(seen.lastProgressAt).toBe(5);
  });

  it.each(['completed', 'expired', 'cancelled'])(
    'sends a %s batch to collecting with its files',
    (status) => {
      const seen = observe(part(), batch({ status, outputFileId: 'file-o', errorFileId: 'file-e' }), 100);
      expect(seen).toMatchObject({
        status: 'collecting',
        outputFileId: 'file-o',
        errorFileId: 'file-e',
        failure: null,
      });
    },
  );

  it('sends a part refused by the enqueued-token limit back to pending with a growing delay, keeping its file', () => {
    const failed = batch({
      status: 'failed',
      errors: [{ code: 'token_limit_exceeded', message: 'Enqueued token limit reached', line: null }],
    });
    const once = observe(part({ fileId: 'file-in' }), failed, 1000);
    expect(once).toMatchObject({
      status: 'pending',
      batchId: null,
      fileId: 'file-in',
      throttles: 1,
      notBefore: 1000 + 60_000,
      attempt: 1,
    });
    const twice = observe(
      { ...once, status: 'active', batchId: 'batch_2' },
      { ...failed, id: 'batch_2' },
      2000,
    );
    expect(twice).toMatchObject({ throttles: 2, notBefore: 2000 + 120_000 });
    expect(throttleDelayMs(20)).toBe(30 * 60_000);
  });

  it('sends a batch failed by validation to collecting with the failure', () => {
    const errors = [
      { code: 'invalid_json_line', message: 'This line is not parseable as valid JSON.', line: 3 },
    ];
    expect(observe(part(), batch({ status: 'failed', errors }), 1)).toMatchObject({
      status: 'collecting',
      failure: errors,
    });
    expect(observe(part(), batch({ status: 'failed' }), 1).failure?.[0]?.code).toBe('batch_failed');
  });

  it("keeps a failed batch's first errors up to FAILURE_BYTES, so that the part fits a DynamoDB item", () => {
    const errors = Array.from({ length: 50_000 }, (_, i) => ({
      code: 'invalid_request',
      message: `Messages parameter is required. (request ${i} of a batch refused line by line)`,
      line: i + 1,
    }));
    const failure = observe(part(), batch({ status: 'failed', errors }), 1).failure ?? [];
    expect(JSON.stringify(failure).length).toBeLessThanOrEqual(FAILURE_BYTES);
    expect(failure.length).toBeGreaterThan(1000);
    expect(failure).toEqual(errors.slice(0, failure.length));
    // A list that fits is kept whole.
    expect(observe(part(), batch({ status: 'failed', errors: errors.slice(0, 100) }), 1).failure).toEqual(
      errors.slice(0, 100),
    );
  });

  it('polls a batch whose status it does not know, even one just created, rather than send its part again', () => {
    expect(observe(part(), batch({ status: 'something_new' }), 1).status).toBe('active');
    const justCreated = { ...part(), status: 'submitting' as const, batchId: null, submittingSince: 1 };
    expect(observe(justCreated, batch({ status: 'queued' }), 2)).toMatchObject({
      status: 'active',
      batchId: 'batch_1',
      submittingSince: null,
    });
  });
});

describe('admit', () => {
  const pending = (n: number, tokens = 1000, notBefore = 0) =>
    part({ part: n, status: 'pending', batchId: null, estimatedTokens: tokens, notBefore });

  it('fills the room maxActiveBatches leaves, in part order', () => {
    const parts = [pending(3), part({ part: 0 }), pending(1), pending(2)];
    expect(admit(parts, settings, 0).map((p) => p.part)).toEqual([1]);
    expect(admit(parts, { ...settings, maxActiveBatches: 10 }, 0).map((p) => p.part)).toEqual([1, 2, 3]);
  });

  it('keeps the enqueued-token budget, but never stalls on a part larger than it', () => {
    const parts = [pending(0, 600), pending(1, 600), pending(2, 100)];
    expect(
      admit(parts, { ...settings, maxActiveBatches: 10, maxEnqueuedTokens: 1000 }, 0).map((p) => p.part),
    ).toEqual([0]);
    expect(admit([pending(0, 5000)], { ...settings, maxEnqueuedTokens: 1000 }, 0).map((p) => p.part)).toEqual(
      [0],
    );
    expect(
      admit([part({ estimatedTokens: 900 }), pending(1, 200)], { ...settings, maxEnqueuedTokens: 1000 }, 0),
    ).toEqual([]);
  });

  it('holds back a throttled part until its time', () => {
    expect(admit([pending(0, 10, 500)], settings, 499)).toEqual([]);
    expect(admit([pending(0, 10, 500)], settings, 500)).toHaveLength(1);
  });
});

describe('nextWait', () => {
  it('polls soon while things move and backs off to the longest wait while they do not', () => {
    const parts = [part()];
    expect(nextWait(parts, true, 600, settings, 0)).toBe(30);
    expect(nextWait(parts, false, 30, settings, 0)).toBe(60);
    expect(nextWait(parts, false, 600, settings, 0)).toBe(900);
  });

  it('comes back at once when work is left over, and not after a throttled part may go', () => {
    expect(nextWait([part({ status: 'collecting' })], false, 600, settings, 0)).toBe(1);
    const throttled = part({ status: 'pending', notBefore: 120_000 });
    expect(nextWait([throttled], false, 600, settings, 0)).toBe(120);
    expect(nextWait([throttled, part({ part: 1 })], false, 600, settings, 0)).toBe(120);
  });

  // With the defaults (20 batches in flight) every dataset over a million requests has parts waiting for
  // room: they must not bring a tick every second while the batches in flight take hours.
  it('lets a part waiting for a place among the batches in flight wait with them', () => {
    const full = [part({ part: 0 }), part({ part: 1 }), part({ part: 2, status: 'pending', batchId: null })];
    expect(nextWait(full, false, 30, settings, 0)).toBe(60);
    expect(nextWait(full, false, 600, settings, 0)).toBe(900);
    expect(nextWait(full, true, 600, settings, 0)).toBe(30);
    const submitting = part({ part: 1, status: 'submitting', batchId: null, submittingSince: 0 });
    expect(nextWait([full[0] as Part, submitting, full[2] as Part], false, 600, settings, 0)).toBe(900);
  });

  it('lets a part waiting for room in the enqueued-token budget wait with the batches in flight', () => {
    const budget = { ...settings, maxActiveBatches: 10, maxEnqueuedTokens: 1000 };
    const parts = [
      part({ part: 0, estimatedTokens: 900 }),
      part({ part: 1, status: 'pending', batchId: null, estimatedTokens: 200 }),
    ];
    expect(nextWait(parts, false, 600, budget, 0)).toBe(900);
  });

  it('comes back at once for a part there is room to send (the tick ran out of time)', () => {
    const waiting = part({ part: 2, status: 'pending', batchId: null });
    expect(nextWait([part({ part: 0 }), waiting], false, 600, settings, 0)).toBe(1);
    expect(nextWait([waiting], false, 600, settings, 0)).toBe(1);
    const budget = { ...settings, maxActiveBatches: 10, maxEnqueuedTokens: 1000 };
    expect(
      nextWait([part({ estimatedTokens: 500 }), { ...waiting, estimatedTokens: 500 }], false, 600, budget, 0),
    ).toBe(1);
    // A part larger than the whole budget goes when nothing is in flight, so it does not wait either.
    expect(nextWait([{ ...waiting, estimatedTokens: 5000 }], false, 600, budget, 0)).toBe(1);
  });

  it('comes back at once to collect even when there is no room to send', () => {
    const parts = [
      part({ part: 0 }),
      part({ part: 1, status: 'collecting' }),
      part({ part: 2 }),
      part({ part: 3, status: 'pending', batchId: null }),
    ];
    expect(nextWait(parts, false, 600, settings, 0)).toBe(1);
  });

  it('does not wake for a throttled part when there will be no room for it', () => {
    const throttled = part({ part: 2, status: 'pending', batchId: null, notBefore: 120_000 });
    expect(nextWait([part({ part: 0 }), part({ part: 1 }), throttled], false, 600, settings, 0)).toBe(900);
    expect(nextWait([throttled], false, 600, settings, 0)).toBe(120);
  });
});

describe('finding a lost batch', () => {
  it('finds the batch made for this run, part and attempt by its metadata, and no other', () => {
    const p = part({ part: 4, attempt: 2 });
    const own = batch({ id: 'mine', metadata: batchMetadata('run-1', 'w', p) });
    const others = [
      batch({ id: 'other-run', metadata: batchMetadata('run-2', 'w', p) }),
      batch({ id: 'other-attempt', metadata: batchMetadata('run-1', 'w', { ...p, attempt: 1 }) }),
      batch({ id: 'other-part', metadata: batchMetadata('run-1', 'w', { ...p, part: 5 }) }),
    ];
    expect(findOwnBatch('run-1', p, [...others, own])?.id).toBe('mine');
    expect(findOwnBatch('run-1', p, others)).toBeUndefined();
  });

  it('is done only when every part is', () => {
    expect(allDone([part({ status: 'done' }), part({ status: 'done' })])).toBe(true);
    expect(allDone([part({ status: 'done' }), part({ status: 'collecting' })])).toBe(false);
  });
});

describe('worthWriting', () => {
  it('writes a change of state at once, and moving counts at most once a shortest poll', async () => {
    const { worthWriting } = await import('../../functions/steps/tick');
    const before = part({ batchStatus: 'in_progress', completed: 3, lastProgressAt: 1000 });
    expect(worthWriting(before, { ...before, batchStatus: 'finalizing' }, 1001, 30_000)).toBe(true);
    expect(worthWriting(before, { ...before, status: 'collecting' }, 1001, 30_000)).toBe(true);
    expect(worthWriting(before, { ...before }, 999_999, 30_000)).toBe(false);
    expect(worthWriting(before, { ...before, completed: 9 }, 30_999, 30_000)).toBe(false);
    expect(worthWriting(before, { ...before, completed: 9 }, 31_000, 30_000)).toBe(true);
  });
});
