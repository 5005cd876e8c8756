import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decompressed, linesOf } from '../../functions/core/lines';
import { chunksAt, chunksOf, collect } from '../support/streams';

const text = (bytes: Uint8Array | null) => (bytes === null ? null : Buffer.from(bytes).toString());

describe('linesOf', () => {
  it('splits LF and CRLF lines, numbers them, and reports where each ends', async () => {
    const lines = await collect(linesOf(chunksOf('a\r\nbb\n\nccc'), 100));
    expect(lines.map((l) => [l.line, text(l.bytes), l.end])).toEqual([
      [1, 'a', 3],
      [2, 'bb', 6],
      [3, '', 7],
      [4, 'ccc', 10],
    ]);
  });

  it('drops a UTF-8 BOM at the start of the stream but counts its bytes in offsets', async () => {
    const lines = await collect(linesOf(chunksOf('\uFEFF{"a":1}\n'), 100));
    expect(text(lines[0]?.bytes ?? null)).toBe('{"a":1}');
    expect(lines[0]?.end).toBe(11);
  });

  it('drops a BOM that arrives split over chunks of one and two bytes, and keeps bytes that only begin like one', async () => {
    for (const cuts of [[1], [2], [1, 1], [1, 2]]) {
      const lines = await collect(linesOf(chunksAt('\uFEFF\n{"a":1}\n', cuts), 100));
      expect(lines.map((l) => [l.line, text(l.bytes), l.end])).toEqual([
        [1, '', 4],
        [2, '{"a":1}', 12],
      ]);
    }
    const lonely = await collect(linesOf(chunksAt(Buffer.from([0xef, 0xbb]), [1]), 100));
    expect(lonely.map((l) => [l.line, l.bytes && [...l.bytes], l.end])).toEqual([[1, [0xef, 0xbb], 2]]);
    const almost = await collect(linesOf(chunksAt(Buffer.from([0xef, 0xbb, 0x41, 0x0a]), [1]), 100));
    expect(almost.map((l) => [l.line, l.bytes && [...l.bytes], l.end])).toEqual([[1, [0xef, 0xbb, 0x41], 4]]);
  });

  it('bounds a line by its bytes without the CR of CRLF', async () => {
    const lines = await collect(linesOf(chunksOf('12345\r\n123456\r\n12345', 2), 5));
    expect(lines.map((l) => [l.line, text(l.bytes), l.length])).toEqual([
      [1, '12345', 6],
      [2, null, 7],
      [3, '12345', 5],
    ]);
  });

  it('reports an over-long line by length without keeping it, and goes on', async () => {
    const long = 'x'.repeat(5000);
    const lines = await collect(linesOf(chunksOf(`ok\n${long}\nfine\n`, 7), 100));
    expect(lines.map((l) => [l.line, text(l.bytes), l.length])).toEqual([
      [1, 'ok', 2],
      [2, null, 5000],
      [3, 'fine', 4],
    ]);
  });

  it('resumes numbering and offsets from a checkpoint', async () => {
    const lines = await collect(linesOf(chunksOf('c\nd\n'), 100, { line: 7, offset: 40 }));
    expect(lines.map((l) => [l.line, l.end])).toEqual([
      [7, 42],
      [8, 44],
    ]);
  });

  it('gives the same lines and offsets however the stream is chunked', async () => {
    const lineArb = fc.string({ unit: fc.constantFrom('a', 'é', '\r', ' ', '{', '😀'), maxLength: 30 });
    await fc.assert(
      fc.asyncProperty(
        fc.array(lineArb, { maxLength: 30 }),
        fc.boolean(),
        fc.array(fc.integer({ min: 1, max: 17 }), { maxLength: 60 }),
        fc.integer({ min: 1, max: 40 }),
        async (rawLines, trailingNewline, cuts, max) => {
          const data = rawLines.join('\n') + (trailingNewline && rawLines.length > 0 ? '\n' : '');
          const lines = await collect(linesOf(chunksAt(data, cuts), max));
          const expected =
            data === '' ? [] : data.endsWith('\n') ? data.slice(0, -1).split('\n') : data.split('\n');
          expect(lines.length).toBe(expected.length);
          let offset = 0;
          expected.forEach((raw, i) => {
            const line = lines[i];
            const rawBytes = Buffer.byteLength(raw);
            offset += rawBytes + (offset + rawBytes < Buffer.byteLength(data) ? 1 : 0);
            expect(line?.line).toBe(i + 1);
            expect(line?.end).toBe(offset);
            expect(line?.length).toBe(rawBytes);
            expect(line?.cr).toBe(raw.endsWith('\r'));
            const withoutCr = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
            expect(text(line?.bytes ?? null)).toBe(Buffer.byteLength(withoutCr) <= max ? withoutCr : null);
          });
        },
      ),
    );
  });
});

describe('decompressed', () => {
  it('gunzips a stream recognized by its content, not its name', async () => {
    const gz = gzipSync(Buffer.from('{"id":1}\n{"id":2}\n'));
    const { gzip, chunks } = await decompressed(chunksOf(gz, 1));
    expect(gzip).toBe(true);
    expect(Buffer.concat(await collect(chunks)).toString()).toBe('{"id":1}\n{"id":2}\n');
  });

  it('passes plain bytes through untouched', async () => {
    const { gzip, chunks } = await decompressed(chunksOf('plain\n', 2));
    expect(gzip).toBe(false);
    expect(Buffer.concat(await collect(chunks)).toString()).toBe('plain\n');
  });

  it('reads an empty stream as no bytes', async () => {
    const { gzip, chunks } = await decompressed(chunksOf(''));
    expect(gzip).toBe(false);
    expect(await collect(chunks)).toEqual([]);
  });

  it('rejects the iteration when the source of a gzip stream fails midway, and the process lives on', async () => {
    const gz = gzipSync(Buffer.from('{"id":1}\n'.repeat(10_000)));
    async function* failing(): AsyncGenerator<Uint8Array> {
      yield gz.subarray(0, 100);
      yield gz.subarray(100, 200);
      throw new Error('connection reset by peer');
    }
    const unhandled: unknown[] = [];
    const onError = (error: unknown) => unhandled.push(error);
    process.on('uncaughtException', onError);
    process.on('unhandledRejection', onError);
    try {
      const { gzip, chunks } = await decompressed(failing());
      expect(gzip).toBe(true);
      await expect(collect(linesOf(chunks, 1024))).rejects.toThrow('connection reset by peer');
      await new Promise((resolve) => setImmediate(resolve));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('uncaughtException', onError);
      process.off('unhandledRejection', onError);
    }
  }, 10_000); // only a failure waits: an error that escapes leaves the iteration hanging

  it('rejects a corrupt gzip stream with a DatasetError', async () => {
    const gz = gzipSync(Buffer.from('{"id":1}\n'.repeat(100)));
    const corrupt = Buffer.concat([gz.subarray(0, 12), Buffer.alloc(40, 0xff), gz.subarray(52)]);
    const { chunks } = await decompressed(chunksOf(corrupt, 16));
    const read = collect(chunks);
    await expect(read).rejects.toThrow(/^The dataset is not valid gzip: /);
    await expect(read).rejects.toMatchObject({ name: 'DatasetError' });
  });

  it('closes the source when the reader stops early', async () => {
    let closed = false;
    async function* source(): AsyncGenerator<Uint8Array> {
      try {
        for (;;) yield gzipSync(Buffer.from('{"id":1}\n'));
      } finally {
        closed = true;
      }
    }
    const { chunks } = await decompressed(source());
    for await (const _ of linesOf(chunks, 1024)) break;
    // The gunzip stream is destroyed at once; the source is closed once its pending read settles.
    for (let turn = 0; turn < 100 && !closed; turn++) await new Promise((resolve) => setImmediate(resolve));
    expect(closed).toBe(true);
  });
});
