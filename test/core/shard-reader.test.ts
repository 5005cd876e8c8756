import { describe, expect, it } from 'vitest';
import { linesOf } from '../../functions/core/lines';
import {
  countNewlines,
  firstLineStart,
  type RangeTally,
  throughLineAt,
} from '../../functions/core/shard-reader';
import { firstLineOf, type Shard } from '../../functions/core/shards';
import { chunksOf, collect } from '../support/streams';

/** A stream of `bytes` from `from` on that counts what it is asked for, to show where reading stops. */
function reading(bytes: Buffer, from: number, size: number, read: { bytes: number }) {
  async function* stream(): AsyncGenerator<Uint8Array> {
    for (let at = from; at < bytes.length; at += size) {
      const chunk = bytes.subarray(at, at + size);
      read.bytes += chunk.length;
      yield chunk;
    }
  }
  return stream();
}

interface OwnedLine {
  readonly line: number;
  readonly text: string;
  readonly end: number;
}

/** The lines range [start, end) of `bytes` owns, numbered as prepare numbers them, and what it counted. */
async function ownedLines(bytes: Buffer, start: number, end: number, size: number) {
  const read = { bytes: 0 };
  const shard: Shard = {
    shard: 0,
    object: 0,
    key: 'k',
    size: bytes.length,
    etag: 'e',
    start,
    end,
    gzip: false,
    objects: 1,
  };
  const tally: RangeTally = { newlinesBeforeEnd: 0, stoppedAt: null };
  let from = 0;
  let line = 1;
  let source: AsyncIterable<Uint8Array>;
  if (start === 0) {
    source = reading(bytes, 0, size, read);
  } else {
    const before = await countNewlines(chunksOf(bytes.subarray(0, start), size), 0, start);
    const found = await firstLineStart(reading(bytes, start - 1, size, read), start, end);
    if (!found.owned) return { lines: [] as OwnedLine[], newlinesToEnd: before + found.newlines, read };
    from = found.offset;
    line = firstLineOf(shard, before, found.previousByteIsNewline);
    source = found.rest;
  }
  const lines: OwnedLine[] = [];
  for await (const raw of linesOf(throughLineAt(source, from, end, tally), 1 << 20, { line, offset: from }))
    lines.push({ line: raw.line, text: Buffer.from(raw.bytes ?? []).toString(), end: raw.end });
  const newlinesToEnd = tally.stoppedAt === null ? null : line - 1 + tally.newlinesBeforeEnd;
  return { lines, newlinesToEnd, read };
}

/** Every line of the object, as one reader numbers them. */
async function allLines(bytes: Buffer): Promise<OwnedLine[]> {
  const out: OwnedLine[] = [];
  for await (const raw of linesOf(chunksOf(bytes), 1 << 20))
    out.push({ line: raw.line, text: Buffer.from(raw.bytes ?? []).toString(), end: raw.end });
  return out;
}

const newlinesIn = (bytes: Buffer, to: number) => [...bytes.subarray(0, to)].filter((b) => b === 0x0a).length;

const OBJECTS: Record<string, string> = {
  lf: '{"a":1}\n{"b":22}\n\n{"c":333}\nx\n',
  crlf: '{"a":1}\r\n{"b":2}\r\n\r\n{"c":3}\r\n',
  'no final newline': 'one\ntwo\nthree',
  'a long line': `a\n${'L'.repeat(37)}\nb\nc\n`,
  'a BOM': '\uFEFFfirst\nsecond\n',
};

describe('shard reading', () => {
  for (const [name, text] of Object.entries(OBJECTS)) {
    const bytes = Buffer.from(text);
    it(`owns every line of an object exactly once, whatever byte two shards meet on (${name})`, async () => {
      const whole = await allLines(bytes);
      // (linesOf drops a BOM only from a first chunk of three bytes or more, as S3's are.)
      for (const size of name === 'a BOM' ? [3, 64] : [1, 3, 64]) {
        for (let cut = 1; cut < bytes.length; cut++) {
          const left = await ownedLines(bytes, 0, cut, size);
          const right = await ownedLines(bytes, cut, bytes.length, size);
          expect([...left.lines, ...right.lines], `cut at ${cut}, chunks of ${size}`).toEqual(whole);
          // The newlines counted up to the cut are those of [0, cut), to number the next shard's lines.
          if (left.newlinesToEnd !== null) expect(left.newlinesToEnd).toBe(newlinesIn(bytes, cut));
        }
      }
    });

    it(`owns every line exactly once with three shards on every pair of bytes (${name})`, async () => {
      const whole = await allLines(bytes);
      for (let a = 1; a < bytes.length; a++) {
        for (let b = a + 1; b < bytes.length; b++) {
          const parts = [
            await ownedLines(bytes, 0, a, 5),
            await ownedLines(bytes, a, b, 5),
            await ownedLines(bytes, b, bytes.length, 5),
          ];
          expect(
            parts.flatMap((p) => p.lines),
            `cuts at ${a} and ${b}`,
          ).toEqual(whole);
          for (const [i, to] of [a, b].entries()) {
            const counted = parts[i]?.newlinesToEnd;
            if (counted !== null && counted !== undefined) expect(counted).toBe(newlinesIn(bytes, to));
          }
        }
      }
    });
  }

  it('gives a range a line longer than itself runs through no line, and reads no further than its end', async () => {
    const bytes = Buffer.from(`a\n${'L'.repeat(5000)}\nb\n`);
    const middle = await ownedLines(bytes, 1000, 2000, 100);
    expect(middle.lines).toEqual([]);
    expect(middle.newlinesToEnd).toBe(1);
    expect(middle.read.bytes).toBeLessThanOrEqual(1100);
    // The range it starts in reads on past its end to finish it, then stops.
    const first = await ownedLines(bytes, 0, 1000, 100);
    expect(first.lines.map((l) => [l.line, l.text.length])).toEqual([
      [1, 1],
      [2, 5000],
    ]);
    expect(first.read.bytes).toBeLessThanOrEqual(5100);
  });

  it('stops reading after the line that holds the byte before its end', async () => {
    const bytes = Buffer.from('0123456789\n'.repeat(100));
    const { lines, read } = await ownedLines(bytes, 0, 25, 4);
    expect(lines.map((l) => l.line)).toEqual([1, 2, 3]);
    expect(read.bytes).toBeLessThanOrEqual(36);
    const middle = await ownedLines(bytes, 500, 530, 4);
    expect(middle.lines.map((l) => l.line)).toEqual([47, 48, 49]);
    expect(middle.read.bytes).toBeLessThanOrEqual(50);
  });

  it('reads nothing for an empty range, or from a start at or past its end', async () => {
    const read = { bytes: 0 };
    expect(await collect(throughLineAt(reading(Buffer.from('a\nb\n'), 2, 1, read), 2, 2))).toEqual([]);
    expect(await collect(throughLineAt(reading(Buffer.from('a\nb\n'), 3, 1, read), 3, 2))).toEqual([]);
    expect(read.bytes).toBe(0);
    expect(await countNewlines(reading(Buffer.from('a\nb\n'), 1, 1, read), 1, 1)).toBe(0);
    expect(read.bytes).toBe(0);
    // A stream that ends inside the range: no line starts, none counted.
    expect(await firstLineStart(chunksOf(''), 1, 10)).toEqual({ owned: false, newlines: 0 });
  });

  it('counts the newlines of a byte range and reads no further', async () => {
    const bytes = Buffer.from('a\nb\r\nc\n\n\nd');
    for (let from = 0; from <= bytes.length; from++) {
      for (let to = from; to <= bytes.length; to++) {
        const read = { bytes: 0 };
        const count = await countNewlines(reading(bytes, from, 2, read), from, to);
        expect(count).toBe(newlinesIn(bytes, to) - newlinesIn(bytes, from));
        expect(read.bytes).toBeLessThanOrEqual(to - from + 1);
      }
    }
  });
});
