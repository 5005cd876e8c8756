import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  entryLine,
  type IdEntry,
  IdFileBuilder,
  type IndexedIdFile,
  parseEntryLine,
  partitionOf,
  readIdFilesAhead,
  readIdPartitions,
} from '../../functions/core/id-files';
import type { BlobStore } from '../../functions/core/ports';

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

/**
 * Objects held in memory, read in chunks of `chunk` bytes with a turn of the event loop before each, and
 * the reads open at once counted: the one part of a BlobStore readIdFilesAhead uses.
 */
function memoryStore(objects: Map<string, Buffer>, chunk: number) {
  const seen = { open: 0, most: 0 };
  const store = {
    async *read(key: string, start = 0) {
      const bytes = objects.get(key);
      if (!bytes) throw new Error(`no ${key}`);
      seen.open += 1;
      seen.most = Math.max(seen.most, seen.open);
      try {
        for (let at = start; at < bytes.length; at += chunk) {
          await new Promise((resolve) => setImmediate(resolve));
          yield bytes.subarray(at, at + chunk);
        }
      } finally {
        seen.open -= 1;
      }
    },
  } as unknown as BlobStore;
  return { store, seen };
}

describe('readIdFilesAhead', () => {
  it('gives what reading the files one after another gives, in the same order, with reads ahead', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 0, max: 40 }), { minLength: 1, maxLength: 30 }),
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 8 }),
        fc.integer({ min: 64, max: 4096 }),
        fc.integer({ min: 1, max: 500 }),
        async (sizes, partitions, files, bytes, chunk) => {
          const objects = new Map<string, Buffer>();
          const indexed: IndexedIdFile[] = [];
          let n = 0;
          for (const [f, size] of sizes.entries()) {
            const builder = new IdFileBuilder(partitions);
            for (let i = 0; i < size; i++, n++)
              builder.add({ id: idOf(n % 12), shard: f, line: i + 1, part: f, bytes: 1, tokens: 1 });
            const { body, index } = builder.take();
            objects.set(`ids/${f}`, await bytesOf(body));
            indexed.push({ key: `ids/${f}`, index });
          }
          const p0 = n % partitions;
          const p1 = Math.min(partitions, p0 + 1 + (n % 3));
          const { store, seen } = memoryStore(objects, chunk);
          const expected: IdEntry[] = [];
          for (const file of indexed)
            for await (const e of readIdPartitions(store, file.key, file.index, p0, p1)) expected.push(e);
          const got: IdEntry[] = [];
          for await (const e of readIdFilesAhead(store, indexed, p0, p1, { files, bytes })) got.push(e);
          expect(got).toEqual(expected);
          expect(seen.open).toBe(0);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('has several small files read at once, and no more than it is told', async () => {
    const objects = new Map<string, Buffer>();
    const indexed: IndexedIdFile[] = [];
    for (let f = 0; f < 40; f++) {
      const builder = new IdFileBuilder(1);
      builder.add({ id: `id-${f}`, shard: f, line: 1, part: f, bytes: 1, tokens: 1 });
      const { body, index } = builder.take();
      objects.set(`ids/${f}`, await bytesOf(body));
      indexed.push({ key: `ids/${f}`, index });
    }
    const { store, seen } = memoryStore(objects, 4);
    const got: string[] = [];
    for await (const e of readIdFilesAhead(store, indexed, 0, 1, { files: 8, bytes: 1 << 20 }))
      got.push(e.id);
    expect(got).toEqual(indexed.map((_, f) => `id-${f}`));
    expect(seen.most).toBe(8);
  });
});
