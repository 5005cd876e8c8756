import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { type DatasetLine, readDataset, readDatasetBatches } from '../../functions/core/dataset';
import { chunksOf, collect } from '../support/streams';

const read = (data: string | Uint8Array, maxRecordBytes = 1024, chunk = 5) =>
  collect(readDataset(chunksOf(data, chunk), { maxRecordBytes }));

const summary = (lines: DatasetLine[]) =>
  lines.map((l) => (l.kind === 'record' ? [l.line, l.record] : [l.line, l.error.code, l.error.message]));

describe('readDatasetBatches', () => {
  it('gives the lines in order, a chunk at a time and at most 256 at once, however the bytes are cut', async () => {
    const data = `${Array.from({ length: 700 }, (_, i) => (i % 97 === 5 ? 'not json' : JSON.stringify({ n: i }))).join('\n')}\n`;
    for (const chunk of [data.length, 4096, 7]) {
      const batches = await collect(readDatasetBatches(chunksOf(data, chunk), { maxRecordBytes: 100 }));
      expect(Math.max(...batches.map((b) => b.length))).toBeLessThanOrEqual(256);
      expect(batches.every((b) => b.length > 0)).toBe(true);
      expect(summary(batches.flat())).toEqual(summary(await read(data, 100, 11)));
      expect(batches.flat().map((l) => l.line)).toEqual(Array.from({ length: 700 }, (_, i) => i + 1));
    }
  });
});

describe('readDataset', () => {
  it('reads JSON objects and skips blank lines, keeping line numbers', async () => {
    const lines = await read('{"id":"1"}\n\n   \n{"id":"2"}\r\n');
    expect(summary(lines)).toEqual([
      [1, { id: '1' }],
      [4, { id: '2' }],
    ]);
  });

  it('reads gzip datasets by content, with a BOM and CRLF inside', async () => {
    const gz = gzipSync(Buffer.from('\uFEFF{"id":"a"}\r\n{"id":"b"}'));
    const formats: boolean[] = [];
    const lines = await collect(
      readDataset(chunksOf(gz, 3), { maxRecordBytes: 100, onFormat: (f) => formats.push(f.gzip) }),
    );
    expect(formats).toEqual([true]);
    expect(summary(lines)).toEqual([
      [1, { id: 'a' }],
      [2, { id: 'b' }],
    ]);
  });

  it('turns each bad line into an error naming its line and reason, and reads on', async () => {
    const bad = Buffer.concat([
      Buffer.from('{"id":"1"}\n'),
      Buffer.from('{"id": oops}\n'),
      Buffer.from('[1,2]\n'),
      Buffer.from('"text"\n'),
      Buffer.from('null\n'),
      Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d, 0x0a]), // {"\xff\xfe":1}
      Buffer.from(`{"id":"${'x'.repeat(200)}"}\n`),
      // Over the bound, a CRLF line's CR is not counted in the length the error gives.
      Buffer.from(`{"id":"${'y'.repeat(100)}"}\r\n`),
      Buffer.from('{"id":"last"}'),
    ]);
    const lines = await read(bad, 64);
    expect(summary(lines)).toEqual([
      [1, { id: '1' }],
      [2, 'invalid_json', expect.stringMatching(/^line 2 is not valid JSON: /)],
      [3, 'not_an_object', 'line 3 is an array, not a JSON object'],
      [4, 'not_an_object', 'line 4 is a string, not a JSON object'],
      [5, 'not_an_object', 'line 5 is null, not a JSON object'],
      [6, 'invalid_utf8', 'line 6 is not valid UTF-8'],
      [7, 'line_too_long', "line 7 is 209 bytes, over the work's maxRecordBytes of 64"],
      [8, 'line_too_long', "line 8 is 109 bytes, over the work's maxRecordBytes of 64"],
      [9, { id: 'last' }],
    ]);
    for (const line of lines) {
      if (line.kind === 'invalid')
        expect(line.error).toMatchObject({ stage: 'dataset', line: line.line, id: null });
    }
  });

  it('keeps record contents out of JSON error messages', async () => {
    const [line] = await read('{"secret": "hunter2", oops}\n');
    expect(line?.kind).toBe('invalid');
    expect(line?.kind === 'invalid' && line.error.message).not.toContain('hunter2');
  });

  it('reads an empty dataset as no lines', async () => {
    expect(await read('')).toEqual([]);
  });

  it('passes over the lines before a gzip checkpoint', async () => {
    const lines = await collect(
      readDataset(chunksOf('{"n":1}\n{"n":2}\n{"n":3}\n'), { maxRecordBytes: 100, skipLines: 2 }),
    );
    expect(summary(lines)).toEqual([[3, { n: 3 }]]);
  });
});
