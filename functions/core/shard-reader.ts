/**
 * Reading a shard's byte range of an object (see core/shards.ts): the range [start, end) owns the lines
 * that START inside it. These functions work on bytes only, never hold a line, and stop reading their
 * source as soon as they have what they need (a ranged S3 GET reads to the object's end otherwise).
 */

const NEWLINE = 0x0a;

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Newline bytes in a buffer. */
function newlinesIn(bytes: Buffer): number {
  let count = 0;
  for (let i = bytes.indexOf(NEWLINE); i !== -1; i = bytes.indexOf(NEWLINE, i + 1)) count += 1;
  return count;
}

/**
 * The newline bytes in [from, to) of an object, given a stream of it that begins at byte `from`. Stops
 * reading at `to`; a stream that ends before counts what it had.
 */
export async function countNewlines(
  source: AsyncIterable<Uint8Array>,
  from: number,
  to: number,
): Promise<number> {
  if (to <= from) return 0;
  let at = from;
  let count = 0;
  for await (const chunk of source) {
    const want = to - at;
    const bytes = asBuffer(chunk);
    count += newlinesIn(want < bytes.length ? bytes.subarray(0, want) : bytes);
    at += bytes.length;
    if (at >= to) break;
  }
  return count;
}

/** Where the first line a range owns starts, found by {@link firstLineStart}. */
export type LineStart =
  | {
      readonly owned: true;
      /** The byte offset of the first line starting at or after the range's start. */
      readonly offset: number;
      /** Whether the byte before the range's start is a newline (the first line starts right at `start`). */
      readonly previousByteIsNewline: boolean;
      /** The stream from `offset` on. */
      readonly rest: AsyncIterable<Uint8Array>;
    }
  | {
      /** No line starts in the range (a line longer than it runs through it, or the object ends). */
      readonly owned: false;
      /** The newline bytes in [start, end): 0, or 1 when the byte at end - 1 is one. */
      readonly newlines: number;
    };

/**
 * Finds the first line start in [start, end) of an object (start > 0), given a stream of it that begins
 * at byte start - 1: the byte after the first newline at or after start - 1. Reads no further than
 * byte end - 1 when the range owns no line.
 */
export async function firstLineStart(
  source: AsyncIterable<Uint8Array>,
  start: number,
  end: number,
): Promise<LineStart> {
  const iterator = source[Symbol.asyncIterator]();
  let at = start - 1;
  let done = false;
  try {
    for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
      const bytes = asBuffer(next.value);
      const limit = Math.min(bytes.length, end - at); // bytes at end - 1 and before
      const found = bytes.subarray(0, limit).indexOf(NEWLINE);
      if (found !== -1) {
        const offset = at + found + 1;
        if (offset >= end) return { owned: false, newlines: 1 };
        done = true;
        const head = bytes.subarray(found + 1);
        async function* rest(): AsyncGenerator<Uint8Array> {
          try {
            if (head.length > 0) yield head;
            for (let more = await iterator.next(); !more.done; more = await iterator.next()) yield more.value;
          } finally {
            await iterator.return?.();
          }
        }
        return { owned: true, offset, previousByteIsNewline: offset === start, rest: rest() };
      }
      at += bytes.length;
      if (at >= end) break;
    }
    return { owned: false, newlines: 0 };
  } finally {
    if (!done) await iterator.return?.();
  }
}

/** What {@link throughLineAt} found once it stopped. */
export interface RangeTally {
  /** Newline bytes read before `end`. */
  newlinesBeforeEnd: number;
  /** The offset just past the newline it stopped after; null until then, and when the stream ended first. */
  stoppedAt: number | null;
}

/**
 * The bytes of a stream that begins at byte `from` of an object (a line start), up to and with the
 * newline that ends the line holding byte end - 1 (the last line a range ending at `end` owns), or to
 * the stream's end. Nothing when `from` is at or past `end`. Counts into `tally` as it goes.
 */
export async function* throughLineAt(
  source: AsyncIterable<Uint8Array>,
  from: number,
  end: number,
  tally: RangeTally = { newlinesBeforeEnd: 0, stoppedAt: null },
): AsyncGenerator<Uint8Array> {
  if (from >= end) return;
  let at = from;
  for await (const chunk of source) {
    const bytes = asBuffer(chunk);
    const below = Math.max(0, Math.min(bytes.length, end - at)); // bytes before `end`
    const searchFrom = Math.max(0, end - 1 - at);
    const stop = searchFrom < bytes.length ? bytes.indexOf(NEWLINE, searchFrom) : -1;
    tally.newlinesBeforeEnd += newlinesIn(bytes.subarray(0, below));
    if (stop !== -1) {
      tally.stoppedAt = at + stop + 1;
      yield bytes.subarray(0, stop + 1);
      return;
    }
    at += bytes.length;
    yield bytes;
  }
}
