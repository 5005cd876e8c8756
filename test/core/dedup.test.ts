import { describe, expect, it } from 'vitest';
import { type DedupHeld, duplicatesIn, FingerprintTable, findDuplicates } from '../../functions/core/dedup';
import type { IdEntry } from '../../functions/core/id-files';

const use = (id: string, shard: number, line: number, part = shard * 10): IdEntry => ({
  id,
  shard,
  line,
  part,
  bytes: 100,
  tokens: 7,
});

/** A source that gives its entries as a stream, counting how often it was read. */
function streamed(entries: readonly IdEntry[]) {
  const source = async function* () {
    source.reads += 1;
    yield* entries;
  } as (() => AsyncGenerator<IdEntry>) & { reads: number };
  source.reads = 0;
  return source;
}

const brief = (found: Awaited<ReturnType<typeof findDuplicates>>) =>
  found.map((d) => `${d.entry.id}@${d.entry.shard}:${d.entry.line} <- ${d.winner.shard}:${d.winner.line}`);

describe('findDuplicates', () => {
  it('finds nothing among distinct ids, reading them once', async () => {
    const source = streamed([use('a', 0, 1), use('b', 0, 2), use('c', 1, 1)]);
    expect(await findDuplicates(source)).toEqual([]);
    expect(source.reads).toBe(1);
  });

  it('finds a duplicate within a shard: the earlier line wins', async () => {
    const found = await findDuplicates(() => [use('a', 0, 1), use('b', 0, 2), use('a', 0, 5)]);
    expect(brief(found)).toEqual(['a@0:5 <- 0:1']);
    expect(found[0]?.entry).toEqual(use('a', 0, 5));
  });

  it('lets the earliest shard win across shards, whatever order the entries come in', async () => {
    // Shard 1's line 1 is later in the dataset than shard 0's line 9.
    const found = await findDuplicates(() => [
      use('x', 1, 1),
      use('x', 0, 9),
      use('y', 2, 3),
      use('y', 1, 4),
    ]);
    expect(brief(found)).toEqual(['x@1:1 <- 0:9', 'y@2:3 <- 1:4']);
  });

  it('names the first use for every later use of an id used three times', async () => {
    const found = await findDuplicates(() => [use('t', 2, 1), use('t', 0, 3), use('t', 1, 2)]);
    expect(brief(found)).toEqual(['t@1:2 <- 0:3', 't@2:1 <- 0:3']);
  });

  it('takes the same entry twice (a step that ran again) as one use', async () => {
    expect(await findDuplicates(() => [use('s', 0, 4), use('s', 0, 4)])).toEqual([]);
    const found = await findDuplicates(() => [
      use('s', 0, 4),
      use('s', 1, 2),
      use('s', 0, 4),
      use('s', 1, 2),
    ]);
    expect(brief(found)).toEqual(['s@1:2 <- 0:4']);
  });

  it('compares ids exactly (case, unicode, numbers as strings)', async () => {
    const ids = ['A', 'a', 'é', 'e\u0301', '1', '01', ' 1', 'a'.repeat(512)];
    const entries = ids.map((id, i) => use(id, 0, i + 1));
    expect(await findDuplicates(() => entries)).toEqual([]);
    const found = await findDuplicates(() => [...entries, use('é', 3, 1)]);
    expect(brief(found)).toEqual(['é@3:1 <- 0:3']);
  });

  it('sorts duplicates by part, then line, then id', async () => {
    const found = await findDuplicates(() => [
      use('p', 0, 1, 0),
      use('q', 0, 2, 0),
      use('p', 5, 7, 51),
      use('q', 5, 7, 51),
      use('p2', 0, 3, 0),
      use('p2', 5, 2, 50),
    ]);
    expect(found.map((d) => [d.entry.part, d.entry.line, d.entry.id])).toEqual([
      [50, 2, 'p2'],
      [51, 7, 'p'],
      [51, 7, 'q'],
    ]);
  });

  it('finds every duplicate when the size hint is far too small (the table grows)', async () => {
    const entries: IdEntry[] = [];
    for (let i = 0; i < 20_000; i++) entries.push(use(`id-${i}`, 0, i + 1));
    for (let i = 0; i < 20_000; i += 1000) entries.push(use(`id-${i}`, 1, i + 1));
    const found = await findDuplicates(() => entries, 4);
    expect(found).toHaveLength(20);
    expect(found.every((d) => d.winner.shard === 0 && d.entry.shard === 1)).toBe(true);
  });
});

describe('duplicatesIn', () => {
  const all = async (source: Parameters<typeof duplicatesIn>[0], held?: DedupHeld) => {
    const out = [];
    for await (const d of duplicatesIn(source, 1024, held)) out.push(d);
    return out;
  };

  it('holds one id, not its uses, for an id used 120,000 times, giving each later use once', async () => {
    const n = 120_000;
    const source = function* () {
      for (let i = 1; i <= n; i++) {
        yield use('same', 0, i);
        if (i % 1000 === 0) yield use('same', 0, i); // a repeat, right after what it repeats
      }
      yield use('other', 1, 1);
    };
    const held: DedupHeld = { ids: 0, uses: 0 };
    let count = 0;
    let previous = 1;
    for await (const d of duplicatesIn(source, n, held)) {
      count += 1;
      expect(d.winner).toEqual({ shard: 0, line: 1 });
      expect(d.entry.line).toBe(previous + 1); // each later use once, in order
      previous = d.entry.line;
    }
    expect(count).toBe(n - 1);
    expect(held).toEqual({ ids: 1, uses: 0 });
  });

  it('remembers the uses given only of an id whose uses come out of order', async () => {
    const held: DedupHeld = { ids: 0, uses: 0 };
    const found = await all(
      () => [use('s', 1, 3), use('s', 0, 4), use('s', 1, 2), use('s', 1, 3), use('t', 0, 1), use('t', 0, 2)],
      held,
    );
    expect(found.map((d) => `${d.entry.id}@${d.entry.shard}:${d.entry.line}`)).toEqual([
      's@1:3',
      's@1:2',
      't@0:2',
    ]);
    expect(held).toEqual({ ids: 2, uses: 2 });
  });

  it('refuses entries whose order changed between reads', async () => {
    let reads = 0;
    const source = () => {
      reads += 1;
      return reads < 3
        ? [use('a', 0, 1), use('a', 0, 2), use('a', 0, 3)]
        : [use('a', 0, 1), use('a', 0, 3), use('a', 0, 2)];
    };
    await expect(all(source)).rejects.toThrow(/changed between two reads/);
  });
});

describe('FingerprintTable', () => {
  it('takes 9 bytes a slot, at most 3/4 full', () => {
    const table = new FingerprintTable(1_000_000);
    for (let i = 0; i < 1_000_000; i++) table.add(`record-${i}`);
    expect(table.size).toBe(1_000_000);
    expect(table.repeated).toBe(false);
    expect(table.byteLength).toBe(2 ** 21 * 9); // 18.9 MB: 19 bytes an entry
    table.add('record-5');
    expect(table.seenTwice('record-5')).toBe(true);
    expect(table.seenTwice('record-6')).toBe(false);
  });
});
