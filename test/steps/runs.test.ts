import { describe, expect, it } from 'vitest';
import { zeroCounts } from '../../functions/core/accounting';
import { ConflictError, type RunStore } from '../../functions/core/ports';
import type { Run } from '../../functions/core/run';
import { updateRun } from '../../functions/steps/runs';

/** A run store holding one run, whose writes lose to another writer `losses` times: the race is the point. */
function racingStore(losses: number): RunStore & { stored: Run } {
  const store = {
    stored: {
      runId: 'r',
      ticks: 0,
      cancelRequested: false,
      counts: zeroCounts(),
      version: 0,
    } as unknown as Run,
    async getRun() {
      return store.stored;
    },
    async putRun(run: Run) {
      if (run.version !== store.stored.version) throw new ConflictError('stale');
      if (losses-- > 0) {
        store.stored = { ...store.stored, ticks: store.stored.ticks + 1, version: store.stored.version + 1 }; // the other writer
        throw new ConflictError('lost');
      }
      store.stored = { ...run, version: run.version + 1 };
      return store.stored;
    },
  };
  return store as unknown as RunStore & { stored: Run };
}

describe('updateRun', () => {
  it('re-reads and re-applies its change when another writer got there first, keeping both changes', async () => {
    const store = racingStore(3);
    const saved = await updateRun(store, 'r', (run) => ({ ...run, cancelRequested: true }));
    expect(saved).toMatchObject({ cancelRequested: true, ticks: 3, version: 4 });
  });

  it('gives up after its attempts, with the conflict', async () => {
    await expect(updateRun(racingStore(100), 'r', (run) => ({ ...run }), 3)).rejects.toBeInstanceOf(
      ConflictError,
    );
  });

  it('writes nothing when the change returns the run itself', async () => {
    const store = racingStore(100); // every write would lose
    expect(await updateRun(store, 'r', (run) => run)).toMatchObject({ version: 0 });
  });
});
