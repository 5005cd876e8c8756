import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { BlobStore } from '../../functions/core/ports';
import { dropsByPart, pieceChunks, textLines } from '../../functions/steps/settle';
import { writeAll } from '../../functions/steps/storage';
import { localS3 } from '../support/local-environment';

const shared = localS3('openai-batch-drops-', 'drops');

/** The store, refusing a read while another is open: an S3 client has so many connections, no more. */
function oneReadAtATime(store: BlobStore): BlobStore & { most: number } {
  let open = 0;
  const guarded = Object.create(store) as BlobStore & { most: number };
  guarded.most = 0;
  guarded.read = async function* (key: string, start?: number, etag?: string, end?: number) {
    if (open > 0) throw new Error(`a read of ${key} while another is open`);
    open += 1;
    guarded.most = Math.max(guarded.most, open);
    try {
      yield* store.read(key, start, etag, end);
    } finally {
      open -= 1;
    }
  };
  return guarded;
}

describe('dropsByPart', () => {
  it('merges 60 sorted drop files by part, holding no read open while it waits on the others', async () => {
    const files: { part: number; line: number; id: string }[][] = [];
    for (let f = 0; f < 60; f++) {
      const drops = Array.from({ length: 40 + f }, (_, i) => ({
        part: (i * 7 + f) % 25,
        line: i + 1,
        id: `id-${f}-${i}-${'é'.repeat(i % 3)}`,
      }));
      drops.sort((a, b) => a.part - b.part || a.line - b.line || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      files.push(drops);
    }
    const keys = files.map((_, f) => `merge/run-${String(f).padStart(3, '0')}.jsonl`);
    for (const [f, drops] of files.entries()) {
      const body = drops.map((d) => JSON.stringify({ ...d, shard: 0, bytes: 10, tokens: 1 })).join('\n');
      await writeAll(shared.blobs, keys[f] as string, `${body}\n`);
    }
    const guarded = oneReadAtATime(shared.blobs);
    const merged: { part: number; drops: { part: number; id: string }[] }[] = [];
    for await (const group of dropsByPart(guarded, keys, 3)) merged.push(group);
    expect(guarded.most).toBe(1);
    const expected = files.flat().filter((d) => d.part >= 3);
    expect(merged.map((g) => g.part)).toEqual(
      [...new Set(expected.map((d) => d.part))].sort((a, b) => a - b),
    );
    for (const group of merged) {
      expect(group.drops.every((d) => d.part === group.part)).toBe(true);
      expect(group.drops.map((d) => d.id).sort()).toEqual(
        expected
          .filter((d) => d.part === group.part)
          .map((d) => d.id)
          .sort(),
      );
    }
  });
});

/** The store, giving each read's bytes in chunks of `size` (so that characters and lines split across them). */
function rechunked(store: BlobStore, size: number): BlobStore {
  const wrapped = Object.create(store) as BlobStore;
  wrapped.read = async function* (key: string, start?: number, etag?: string, end?: number) {
    for await (const chunk of store.read(key, start, etag, end))
      for (let i = 0; i < chunk.length; i += size) yield chunk.subarray(i, i + size);
  };
  return wrapped;
}

describe('pieceChunks', () => {
  it('gives every line of an object through textLines, whatever the piece and chunk sizes, characters split across pieces', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.string({ unit: 'binary', maxLength: 30 }).map((l) => l.replace(/\n/g, ' ')),
          {
            minLength: 1,
            maxLength: 40,
          },
        ),
        fc.boolean(),
        fc.integer({ min: 1, max: 64 }),
        fc.integer({ min: 1, max: 7 }),
        async (lines, trailingNewline, pieceBytes, chunkBytes) => {
          const text = lines.join('\n') + (trailingNewline ? '\n' : '');
          await writeAll(shared.blobs, 'pieces/object.txt', text);
          const got: string[] = [];
          const chunks = pieceChunks(rechunked(shared.blobs, chunkBytes), 'pieces/object.txt', pieceBytes);
          for await (const line of textLines(chunks)) got.push(line);
          const body = Buffer.from(text).toString('utf8'); // lone surrogates as UTF-8 makes them
          // What follows the last newline is a line when it is not empty.
          const want = body.split('\n');
          if (want.at(-1) === '') want.pop();
          expect(got).toEqual(want);
        },
      ),
      { numRuns: 60 },
    );
  });
});
