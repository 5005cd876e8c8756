import { describe, expect, it } from 'vitest';
import { forEachLimit, mapLimit } from '../../functions/core/limit';

const turn = () => new Promise((resolve) => setImmediate(resolve));

describe('forEachLimit', () => {
  it('calls on every item in order, never more than the limit at once', async () => {
    let open = 0;
    let most = 0;
    const started: number[] = [];
    const count = await forEachLimit([...Array(50).keys()], 7, async (item) => {
      started.push(item);
      open += 1;
      most = Math.max(most, open);
      for (let i = 0; i < item % 4; i++) await turn();
      open -= 1;
    });
    expect(count).toBe(50);
    expect(started).toEqual([...Array(50).keys()]);
    expect(most).toBe(7);
  });

  it('starts none once told to stop, lets those under way finish, and says how many it started', async () => {
    let finished = 0;
    let allowed = 12;
    const count = await forEachLimit(
      [...Array(100).keys()],
      5,
      async () => {
        allowed -= 1;
        await turn();
        finished += 1;
      },
      () => allowed > 0,
    );
    expect(count).toBe(12);
    expect(finished).toBe(12);
  });

  it('rejects with the first failure once the calls under way have settled, and starts no more', async () => {
    const settled: number[] = [];
    const run = forEachLimit([...Array(30).keys()], 4, async (item) => {
      await turn();
      if (item === 5) throw new Error('item 5 failed');
      await turn();
      settled.push(item);
    });
    await expect(run).rejects.toThrow('item 5 failed');
    expect(Math.max(...settled)).toBeLessThan(10);
  });

  it('rejects with the failure that came first in time, not the first item that failed', async () => {
    const run = forEachLimit([0, 1, 2], 3, async (item) => {
      for (let i = 0; i < 3 - item; i++) await turn(); // item 2 fails first, then 1
      if (item > 0) throw new Error(`item ${item} failed`);
    });
    await expect(run).rejects.toThrow('item 2 failed');
  });

  it('maps in order with mapLimit', async () => {
    expect(await mapLimit([3, 1, 2], 2, async (n) => n * 10)).toEqual([30, 10, 20]);
    expect(await mapLimit([], 4, async (n: number) => n)).toEqual([]);
  });
});
