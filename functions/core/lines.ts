import { pipeline, Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { DatasetError } from './errors';

/** One line of a byte stream, without its line ending. */
export interface RawLine {
  /** 1-based line number. */
  readonly line: number;
  /** Byte offset just past this line's newline: where reading resumes after it. */
  readonly end: number;
  /**
   * The line's bytes without its CR (a view, valid until the next line is read), or null when they were
   * over the bound.
   */
  readonly bytes: Uint8Array | null;
  /** The line's length in bytes in the stream (a CR before its newline too), counted even over the bound. */
  readonly length: number;
  /** The line's last byte is a CR, which `bytes` leaves out (and the line's length without it is length - 1). */
  readonly cr: boolean;
}

/** Where a line reader starts: after `line - 1` lines and `offset` bytes of the stream. */
export interface LinePosition {
  readonly line: number;
  readonly offset: number;
}

const NEWLINE = 0x0a;
/** UTF-8's byte-order mark. */
const BOM = [0xef, 0xbb, 0xbf] as const;
const CR = 0x0d;
const GZIP_MAGIC = [0x1f, 0x8b] as const;

/** True when the bytes start with gzip's magic number. */
export function isGzip(head: Uint8Array): boolean {
  return head[0] === GZIP_MAGIC[0] && head[1] === GZIP_MAGIC[1];
}

/**
 * The stream's bytes, gunzipped when its content (not its name) says gzip. `gzip` is known once the
 * first chunk has been read. `object`, when given, is the dataset object the stream is, named by an
 * error (a dataset of many objects).
 */
export async function decompressed(
  source: AsyncIterable<Uint8Array>,
  object?: string,
): Promise<{ gzip: boolean; chunks: AsyncIterable<Uint8Array> }> {
  const iterator = source[Symbol.asyncIterator]();
  let first = await iterator.next();
  while (!first.done && first.value.length < 2) {
    // A one-byte first chunk cannot show the magic number: join it with the next.
    const next = await iterator.next();
    if (next.done) break;
    first = { done: false, value: Buffer.concat([first.value, next.value]) };
  }
  if (first.done) return { gzip: false, chunks: emptyChunks() };
  const head = first.value;
  async function* rest(): AsyncGenerator<Uint8Array> {
    try {
      yield head;
      for (let next = await iterator.next(); !next.done; next = await iterator.next()) yield next.value;
    } finally {
      await iterator.return?.(); // a reader that stops early closes the source (an S3 body)
    }
  }
  if (!isGzip(head)) return { gzip: false, chunks: rest() };
  return { gzip: true, chunks: gunzipped(rest(), object) };
}

/**
 * Gunzips a byte stream. Through `pipeline`, a failure of the source or of the gzip data rejects the
 * iteration (never an unhandled 'error' event); gzip data that is not gzip is a {@link DatasetError}.
 */
async function* gunzipped(source: AsyncIterable<Uint8Array>, object?: string): AsyncGenerator<Uint8Array> {
  // pipeline destroys the gunzip stream with the first error, so iterating it rejects with that error.
  const gunzip = pipeline(Readable.from(source), createGunzip(), () => {});
  try {
    for await (const chunk of gunzip) yield chunk as Uint8Array;
  } catch (caught) {
    if (isZlibError(caught))
      throw new DatasetError(
        `The dataset ${object === undefined ? '' : `object ${object} `}is not valid gzip: ${caught.message}.`,
      );
    throw caught;
  } finally {
    gunzip.destroy();
  }
}

function isZlibError(caught: unknown): caught is Error {
  const code = (caught as { code?: unknown } | null)?.code;
  return caught instanceof Error && typeof code === 'string' && code.startsWith('Z_');
}

async function* emptyChunks(): AsyncGenerator<Uint8Array> {}

/**
 * Splits a byte stream into lines (LF or CRLF; a leading UTF-8 BOM is dropped). A line longer than
 * `maxLineBytes` is not kept in memory: it is reported with `bytes: null` and its length, and reading
 * goes on with the next line. Lines are views into the chunks, copied only when they span two chunks.
 */
export async function* linesOf(
  chunks: AsyncIterable<Uint8Array>,
  maxLineBytes: number,
  start: LinePosition = { line: 1, offset: 0 },
): AsyncGenerator<RawLine> {
  const splitter = new LineSplitter(maxLineBytes, start);
  for await (const chunk of chunks) for (const raw of splitter.linesIn(chunk)) yield raw;
  const last = splitter.end();
  if (last) yield last;
}

/**
 * {@link linesOf} one chunk at a time, for a reader that handles a chunk's lines without an `await` each
 * (on the hot paths of prepare and collect): feed every chunk to `linesIn` in order, then call `end`.
 */
export class LineSplitter {
  private line: number;
  private offset: number;
  private pending: Uint8Array[] = [];
  private pendingLength = 0;
  private oversize = false;
  /** The last byte of the pending line's bytes so far (kept when they are not: an oversize line's CR). */
  private lastPendingByte = -1;
  private atStreamStart: boolean;
  /** The stream's first bytes while they are too few to tell whether they begin with a BOM. */
  private head: Uint8Array | null = null;

  constructor(
    private readonly maxLineBytes: number,
    start: LinePosition = { line: 1, offset: 0 },
  ) {
    this.line = start.line;
    this.offset = start.offset;
    this.atStreamStart = start.offset === 0;
  }

  /** The lines a chunk completes; what follows its last newline waits for the next chunk. */
  *linesIn(chunk: Uint8Array): Generator<RawLine> {
    let view = chunk;
    if (this.atStreamStart) {
      if (this.head) view = Buffer.concat([this.head, view]);
      if (view.length < BOM.length && view.every((byte, i) => byte === BOM[i])) {
        this.head = Buffer.from(view); // a BOM's first bytes, maybe: wait for the next chunk
        return;
      }
      this.atStreamStart = false;
      this.head = null;
      if (BOM.every((byte, i) => view[i] === byte)) {
        view = view.subarray(BOM.length);
        this.offset += BOM.length;
      }
    }
    let position = 0;
    while (position < view.length) {
      const newline = view.indexOf(NEWLINE, position);
      if (newline === -1) {
        const rest = view.subarray(position);
        this.pendingLength += rest.length;
        this.lastPendingByte = rest[rest.length - 1] ?? this.lastPendingByte;
        // One byte over the bound may be the CR of a CRLF line, which does not count.
        if (this.oversize || this.pendingLength > this.maxLineBytes + 1) {
          this.oversize = true;
          this.pending = [];
        } else {
          this.pending.push(Buffer.from(rest)); // copied: the producer may reuse its chunk
        }
        this.offset += rest.length;
        return;
      }
      yield this.finish(view.subarray(position, newline), newline + 1 - position);
      position = newline + 1;
    }
  }

  /** The stream ended: its last line when it had no newline, else null. */
  end(): RawLine | null {
    if (this.head) {
      // The stream was only the first bytes of a BOM: they are its (unreadable) last line.
      const head = this.head;
      this.head = null;
      this.atStreamStart = false;
      this.pending = [head];
      this.pendingLength = head.length;
      this.offset += head.length;
    }
    if (this.pendingLength === 0 && !this.oversize) return null;
    this.offset -= this.pendingLength;
    return this.finish(new Uint8Array(0), this.pendingLength);
  }

  private finish(tail: Uint8Array, consumed: number): RawLine {
    const length = this.pendingLength + tail.length;
    const last = tail.length > 0 ? tail[tail.length - 1] : this.pendingLength > 0 ? this.lastPendingByte : -1;
    this.offset += consumed;
    let bytes: Uint8Array | null = null;
    if (!this.oversize && length <= this.maxLineBytes + 1) {
      bytes = withoutCR(this.pending.length === 0 ? tail : Buffer.concat([...this.pending, tail], length));
      if (bytes.length > this.maxLineBytes) bytes = null; // the bound is on the line without its CR
    }
    const result: RawLine = {
      line: this.line,
      end: this.offset,
      bytes,
      length,
      cr: last === CR,
    };
    this.line += 1;
    if (this.pending.length > 0) this.pending = [];
    this.pendingLength = 0;
    this.oversize = false;
    return result;
  }
}

function withoutCR(bytes: Uint8Array): Uint8Array {
  return bytes.length > 0 && bytes[bytes.length - 1] === CR ? bytes.subarray(0, bytes.length - 1) : bytes;
}

/** True when a line holds only spaces and tabs (or nothing). */
export function isBlank(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== 0x20 && bytes[i] !== 0x09) return false;
  }
  return true;
}
