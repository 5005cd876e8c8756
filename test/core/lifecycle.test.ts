import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  admit,
  allDone,
  type BatchView,
  batchMetadata,
  findOwnBatch,
  isInFlight,
  observe,
} from '../../functions/core/reconciler';
import { newPart, type Part } from '../../functions/core/run';

/**
 * The part lifecycle as a property: random batch fates, random faults on create (the answer lost before
 * or after OpenAI acted) and random crash points (a tick dies between two writes, what it did on OpenAI
 * stays) drive a run of parts through the reconciler's functions, in the order Tick calls them. After
 * every sequence: every part is done, no part was paid for twice, the active-batch limit held, and each
 * part only moved along the lifecycle.
 */

type Fate = 'completed' | 'expired' | 'cancelled' | 'invalid' | 'token_limit';
type CreateFault = 'none' | 'lost_before' | 'lost_after';

interface SimBatch {
  view: BatchView;
  path: string[];
}

const RUN = 'run-p';
const ORDER: Record<Part['status'], number> = {
  pending: 0,
  submitting: 1,
  active: 2,
  collecting: 3,
  done: 4,
};

const scenario = fc.record({
  parts: fc.integer({ min: 1, max: 6 }),
  maxActiveBatches: fc.integer({ min: 1, max: 3 }),
  fates: fc.array(
    fc.constantFrom<Fate>('completed', 'completed', 'expired', 'cancelled', 'invalid', 'token_limit'),
    {
      minLength: 1,
      maxLength: 30,
    },
  ),
  faults: fc.array(fc.constantFrom<CreateFault>('none', 'none', 'lost_before', 'lost_after'), {
    minLength: 1,
    maxLength: 30,
  }),
  /** Per tick: after how many writes the tick dies (beyond the writes it makes: it does not die). */
  crashes: fc.array(fc.integer({ min: 0, max: 8 }), { minLength: 1, maxLength: 60 }),
});

function pathOf(fate: Fate): string[] {
  switch (fate) {
    case 'completed':
      return ['validating', 'in_progress', 'finalizing', 'completed'];
    case 'expired':
      return ['validating', 'in_progress', 'expired'];
    case 'cancelled':
      return ['validating', 'in_progress', 'cancelling', 'cancelled'];
    case 'invalid':
      return ['validating', 'failed:invalid'];
    case 'token_limit':
      return ['validating', 'failed:token_limit_exceeded'];
  }
}

function simulate(s: {
  parts: number;
  maxActiveBatches: number;
  fates: Fate[];
  faults: CreateFault[];
  crashes: number[];
}) {
  const store = new Map<number, Part>();
  for (let i = 0; i < s.parts; i++)
    store.set(
      i,
      newPart({ part: i, generation: 0, model: 'm', requests: 10, bytes: 10, estimatedTokens: 10 }),
    );
  const openai = new Map<string, SimBatch>();
  const history = new Map<number, Part['status'][]>();
  let draws = 0;
  let maxInFlight = 0;
  let now = 0;

  const advance = () => {
    for (const batch of openai.values()) {
      const next = batch.path.shift();
      if (!next) continue;
      const [status = '', code] = next.split(':');
      const done =
        status === 'completed' ? batch.view.total : status === 'expired' || status === 'cancelled' ? 4 : 0;
      batch.view = {
        ...batch.view,
        status,
        completed: done,
        errors: code ? [{ code, message: code, line: null }] : [],
        outputFileId: done > 0 ? `file-out-${batch.view.id}` : null,
      };
    }
  };

  for (let tick = 0; tick < 400 && !allDone([...store.values()]); tick++) {
    now += 60_000;
    advance();
    // Finite sequences: after them no more crashes, faults or bad fates, so that a run can end.
    const crashAfter = s.crashes[tick] ?? 99;
    let writes = 0;
    const write = (part: Part): boolean => {
      if (writes >= crashAfter) return false; // the tick died before this write
      writes += 1;
      store.set(part.part, part);
      history.set(part.part, [...(history.get(part.part) ?? []), part.status]);
      return true;
    };
    const parts = () => [...store.values()];
    let alive = true;
    const step = (part: Part) => {
      alive = alive && write(part);
      return alive;
    };
    // 1. Lost creates: found by metadata, or sent again after the grace (here: a tick later).
    for (const part of parts().filter((p) => p.status === 'submitting')) {
      if (!alive) break;
      const own = findOwnBatch(
        RUN,
        part,
        [...openai.values()].map((b) => b.view),
      );
      if (own) step(observe(part, own, now));
      else if (now - (part.submittingSince ?? 0) > 60_000)
        step({ ...part, status: 'pending', submittingSince: null });
    }
    // 2. Batches in flight.
    for (const part of parts().filter((p) => p.status === 'active' && p.batchId)) {
      if (!alive) break;
      const batch = openai.get(part.batchId ?? '');
      if (batch) step(observe(part, batch.view, now));
    }
    // 3. Collect (results written; leftovers would become a new part: out of this model).
    for (const part of parts().filter((p) => p.status === 'collecting')) {
      if (!alive) break;
      step({ ...part, status: 'done' });
    }
    // 4. Submit: intent first, then the create, then its answer.
    for (const pending of admit(
      parts(),
      { maxActiveBatches: s.maxActiveBatches, maxEnqueuedTokens: undefined },
      now,
    )) {
      if (!alive) break;
      const intent: Part = {
        ...pending,
        status: 'submitting',
        attempt: pending.attempt + 1,
        submittingSince: now,
      };
      if (!step(intent)) break;
      maxInFlight = Math.max(maxInFlight, parts().filter(isInFlight).length);
      const fault = s.faults[draws] ?? 'none';
      const fate = s.fates[draws] ?? 'completed';
      draws += 1;
      if (fault === 'lost_before') continue;
      const id = `batch_${openai.size}`;
      const view: BatchView = {
        id,
        status: 'validating',
        total: 10,
        completed: 0,
        failed: 0,
        outputFileId: null,
        errorFileId: null,
        errors: [],
        metadata: batchMetadata(RUN, 'w', intent),
        createdAt: now / 1000,
      };
      openai.set(id, { view, path: pathOf(fate).slice(1) });
      if (fault === 'lost_after') continue;
      step(observe(intent, view, now));
    }
  }
  return { store, openai, history, maxInFlight };
}

describe('the part lifecycle under random fates, faults and crash points', () => {
  it('ends every part, pays no part twice, keeps the limit, and never moves a part backwards', () => {
    fc.assert(
      fc.property(scenario, (s) => {
        const { store, openai, history, maxInFlight } = simulate(s);
        expect([...store.values()].filter((p) => p.status !== 'done').map((p) => p.part)).toEqual([]);
        // A batch that ran (any status but failed) is paid: at most one per part.
        const paid = new Map<string, number>();
        for (const { view } of openai.values())
          if (view.status !== 'failed')
            paid.set(view.metadata.part ?? '', (paid.get(view.metadata.part ?? '') ?? 0) + 1);
        expect([...paid.values()].filter((n) => n > 1)).toEqual([]);
        expect(maxInFlight).toBeLessThanOrEqual(s.maxActiveBatches);
        // Forward only, but for a part the token limit sent back to pending (it cost nothing) and a lost
        // create sent back to be tried again.
        for (const statuses of history.values())
          for (let i = 1; i < statuses.length; i++) {
            const [from = 'pending', to = 'pending'] = [statuses[i - 1], statuses[i]];
            if (ORDER[to] < ORDER[from])
              expect([from, to]).toSatisfy(
                ([f, t]) => t === 'pending' && (f === 'active' || f === 'submitting'),
              );
          }
      }),
      { numRuns: 300 },
    );
  });
});
