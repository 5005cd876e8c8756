import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  entryLine,
  type IdEntry,
  IdFileBuilder,
  parseEntryLine,
  partitionOf,
} from '../../functions/core/id-files';

/** The body of a taken file, whole. */
async function bytesOf(body: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of body) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** Ids of every kind: short, long (over a chunk), with quotes, tabs, newlines and characters of 2 to 4 bytes. */
function idOf(i: number): string {
  const kinds = [
    () => `r${i}`,
    () => `quote "${i}" tab\there`,
    () => `line\nbreak ${i}`,
    () => `é${i}ü`,
    () => `${'😀'.repeat(i % 7)}-${i}`,
    () => `long-${i}-${'x'.repeat(9000 + (i % 13))}`,
  ];
  return (kinds[i % kinds.length] ?? kinds[0])?.() ?? '';
}

describe('IdFileBuilder', () => {
  it.each([1, 7, 64])(
    'gives every entry back, in its partition and order, with %i partitions',
    async (partitions) => {
      const builder = new IdFileBuilder(partitions);
      const added: IdEntry[] = [];
      for (let i = 0; i < 3000; i++) {
        const entry = {
          id: idOf(i),
          shard: i % 5,
          line: i + 1,
          part: 100_000 + (i % 3),
          bytes: 10 + i,
          tokens: i % 17,
        };
        builder.add(entry);
        added.push(entry);
      }
      expect(builder.size).toBe(3000);
      const { body, index } = builder.take();
      expect(builder.size).toBe(0);
      const file = await bytesOf(body);
      expect(index.offsets).toHaveLength(partitions + 1);
      expect(index.offsets.at(-1)).toBe(file.length);
      for (let p = 0; p < partitions; p++) {
        const text = file.subarray(index.offsets[p], index.offsets[p + 1]).toString('utf8');
        const entries = text.split('\n').filter(Boolean).map(parseEntryLine);
        const expected = added.filter((e) => partitionOf(e.id, partitions) === p);
        expect(entries).toEqual(expected);
        expect(index.counts[p]).toBe(expected.length);
      }
    },
  );

  it('starts empty again after a take', async () => {
    const builder = new IdFileBuilder(4);
    builder.add({ id: 'a', shard: 0, line: 1, part: 0, bytes: 1, tokens: 1 });
    await bytesOf(builder.take().body);
    builder.add({ id: 'b', shard: 0, line: 2, part: 0, bytes: 1, tokens: 1 });
    const { body, index } = builder.take();
    const text = (await bytesOf(body)).toString('utf8');
    expect(
      text
        .split('\n')
        .filter(Boolean)
        .map(parseEntryLine)
        .map((e) => e.id),
    ).toEqual(['b']);
    expect(index.counts.reduce((a, b) => a + b, 0)).toBe(1);
  });
});

describe('parseEntryLine', () => {
  const entry = fc.record({
    id: fc.oneof(
      fc.string(),
      fc.string({ unit: 'binary' }),
      fc.constantFrom('"', '\\', 'a\tb', '\n', '"\t1'),
    ),
    shard: fc.nat(),
    line: fc.nat(),
    part: fc.nat({ max: 2 ** 40 }),
    bytes: fc.nat(),
    tokens: fc.nat(),
  });

  it('reads back every entry entryLine writes', () => {
    fc.assert(
      fc.property(entry, (e) => {
        expect(parseEntryLine(entryLine(e).slice(0, -1))).toEqual(e);
      }),
    );
  });

  it('refuses what is not an entry line: a bad id, a missing or extra number, a sign or a fraction', () => {
    const bad = [
      '',
      'r1\t0\t1\t2\t3\t4',
      '"r1"\t0\t1\t2\t3',
      '"r1"\t0\t1\t2\t3\t4\t5',
      '"r1"\t0\t1\t2\t3\t',
      '"r1"\t0\t\t2\t3\t4',
      '"r1"\t-1\t1\t2\t3\t4',
      '"r1"\t0\t1.5\t2\t3\t4',
      '"r\\x"\t0\t1\t2\t3\t4',
      '"r1" \t0\t1\t2\t3\t4',
      '"a"b"\t0\t1\t2\t3\t4',
      '"a\tb"\t0\t1\t2\t3\t4',
    ];
    for (const line of bad)
      expect(() => parseEntryLine(line), JSON.stringify(line)).toThrow('not an id entry');
  });
});
