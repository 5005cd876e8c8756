import { z } from 'zod';
import { fingerprint } from './ids';
import { type BlobStore, readRange } from './ports';

/**
 * Where a request with a given custom_id was placed, as prepare records it: one entry per request written
 * to a part. Settle reads them back, partition by partition, to find ids used more than once.
 */
export interface IdEntry {
  readonly id: string;
  readonly shard: number;
  /** The dataset line (of the shard's object) the request came from. */
  readonly line: number;
  readonly part: number;
  /** What the request adds to its part, to take away when it is dropped as a duplicate. */
  readonly bytes: number;
  readonly tokens: number;
}

/** The partition an id belongs to, of `partitions`. */
export function partitionOf(id: string, partitions: number): number {
  return fingerprint(id)[0] % partitions;
}

/**
 * The index stored beside an id file (`<key>.idx`): the byte offset of each partition's entries in the
 * file, and one past the last (`offsets[p]` to `offsets[p + 1]`), with the entry count of each partition.
 */
export const IdFileIndexSchema = z.object({
  partitions: z.number().int().positive(),
  offsets: z.array(z.number().int().nonnegative()),
  counts: z.array(z.number().int().nonnegative()),
});

/** The index of an id file. */
export type IdFileIndex = z.infer<typeof IdFileIndexSchema>;

/** An entry as its line in an id file: the id as JSON (any string), then numbers, tab-separated. */
export function entryLine(entry: IdEntry): string {
  return `${JSON.stringify(entry.id)}\t${entry.shard}\t${entry.line}\t${entry.part}\t${entry.bytes}\t${entry.tokens}\n`;
}

/** Whether JSON.stringify wrote a string's text as is: no quote, backslash or control character in it. */
function writtenAsIs(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c === 0x22 || c === 0x5c) return false;
  }
  return true;
}

/**
 * The string a JSON text holds (an id as JSON.stringify wrote it), or undefined when it holds none. Read on
 * the per-entry paths, so an id written without an escape is taken from between its quotes as it stands.
 */
export function stringFromJson(json: string): string | undefined {
  if (json.length >= 2 && json.charCodeAt(0) === 0x22 && json.charCodeAt(json.length - 1) === 0x22) {
    const inner = json.slice(1, -1);
    if (writtenAsIs(inner)) return inner;
  }
  try {
    const value: unknown = JSON.parse(json);
    return typeof value === 'string' ? value : undefined;
  } catch {
    return undefined;
  }
}

/**
 * An entry from its line (without the newline). Settle reads every entry of a run twice, so this reads the
 * line by hand: an id JSON.stringify wrote without a backslash is the text between its quotes, and the
 * numbers are read digit by digit.
 */
export function parseEntryLine(line: string): IdEntry {
  const tab = line.lastIndexOf('"') + 1;
  const id = stringFromJson(line.slice(0, tab));
  const numbers = [0, 0, 0, 0, 0];
  let field = -1;
  let digits = 0;
  for (let i = tab; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (c === 0x09) {
      if (field >= 0 && digits === 0) break;
      field += 1;
      digits = 0;
      if (field >= numbers.length) break;
    } else if (c >= 0x30 && c <= 0x39 && field >= 0) {
      numbers[field] = (numbers[field] ?? 0) * 10 + (c - 0x30);
      digits += 1;
    } else {
      field = numbers.length; // not a number
      break;
    }
  }
  if (typeof id !== 'string' || field !== numbers.length - 1 || digits === 0)
    throw new Error(`not an id entry: ${line.length} characters`);
  const [shard = 0, at = 0, part = 0, bytes = 0, tokens = 0] = numbers;
  return { id, shard, line: at, part, bytes, tokens };
}

/** The bytes of one partition's entries a builder holds: chunks, the last one filled up to `used`. */
interface HeldPartition {
  chunks: Buffer[];
  used: number;
  count: number;
}

/** The size of the chunks a builder holds a partition's entries in. */
const CHUNK_BYTES = 8 * 1024;

/**
 * Gathers a step's id entries by partition, in memory up to a bound, then gives them as one file grouped
 * by partition and its index. Entries keep their order within a partition. Each entry is encoded to UTF-8
 * as it comes, into chunks of its partition: about 33 bytes an entry, where holding the lines as strings
 * took ten times that (V8 keeps a string built of many pieces as a tree of them).
 */
export class IdFileBuilder {
  private held: HeldPartition[];
  private entries = 0;
  private bytes = 0;

  constructor(readonly partitions: number) {
    this.held = this.empty();
  }

  private empty(): HeldPartition[] {
    return Array.from({ length: this.partitions }, () => ({ chunks: [], used: 0, count: 0 }));
  }

  /** Entries held. */
  get size(): number {
    return this.entries;
  }

  /** Bytes the held entries take as lines. */
  get byteLength(): number {
    return this.bytes;
  }

  add(entry: IdEntry): void {
    const line = entryLine(entry);
    const length = Buffer.byteLength(line);
    const held = this.held[partitionOf(entry.id, this.partitions)];
    if (!held) return;
    let chunk = held.chunks.at(-1);
    if (!chunk || chunk.length - held.used < length) {
      // The full chunk keeps only what was written in it.
      if (chunk) held.chunks[held.chunks.length - 1] = chunk.subarray(0, held.used);
      chunk = Buffer.allocUnsafe(Math.max(CHUNK_BYTES, length));
      held.chunks.push(chunk);
      held.used = 0;
    }
    held.used += chunk.write(line, held.used);
    held.count += 1;
    this.entries += 1;
    this.bytes += length;
  }

  /** The file's body, partition after partition, and its index; the builder is empty afterwards. */
  take(): { body: AsyncIterable<Uint8Array>; index: IdFileIndex } {
    const offsets: number[] = [0];
    const counts: number[] = [];
    const pieces: Buffer[] = [];
    let at = 0;
    for (const held of this.held) {
      held.chunks.forEach((chunk, i) => {
        const piece = i === held.chunks.length - 1 ? chunk.subarray(0, held.used) : chunk;
        pieces.push(piece);
        at += piece.length;
      });
      offsets.push(at);
      counts.push(held.count);
    }
    this.held = this.empty();
    this.entries = 0;
    this.bytes = 0;
    async function* body(): AsyncGenerator<Uint8Array> {
      // Chunks are let go as they are written.
      while (pieces.length > 0) {
        const piece = pieces.shift();
        if (piece) yield piece;
      }
    }
    return { body: body(), index: { partitions: this.partitions, offsets, counts } };
  }
}

/** Partitions the id files of a dataset of `bytes` bytes are split into: about 64 MiB of data each. */
export function partitionsFor(bytes: number): number {
  return Math.min(1024, Math.max(1, Math.ceil(bytes / (64 * 1024 * 1024))));
}

/**
 * How many times its own size a gzip object is taken to hold as JSONL, where the id partitions are sized
 * (a partition is about 64 MiB of data, and Settle holds at least one whole partition's ids at once):
 * JSONL text compresses 5 to 10 times, so a gzip dataset counted by its stored bytes would get a tenth of
 * the partitions it needs, each as many times larger. Counting too much only makes more, smaller ones.
 */
export const GZIP_EXPANSION = 10;

/** The id partitions of a dataset, by its bytes as JSONL: a gzip object's as GZIP_EXPANSION times its own. */
export function partitionsOf(dataset: { readonly bytes: number; readonly gzipBytes: number }): number {
  return partitionsFor(dataset.bytes + (GZIP_EXPANSION - 1) * dataset.gzipBytes);
}

/** The key of an id file's index. */
export function idIndexKey(idFileKey: string): string {
  return `${idFileKey}.idx`;
}

/** An id file's index, read from its `.idx` object. */
export async function readIdFileIndex(blobs: BlobStore, idFileKey: string): Promise<IdFileIndex> {
  let text = '';
  const decoder = new TextDecoder();
  for await (const chunk of blobs.read(idIndexKey(idFileKey)))
    text += decoder.decode(chunk, { stream: true });
  text += decoder.decode();
  return IdFileIndexSchema.parse(JSON.parse(text));
}

/** An id file with its index, as Settle reads them. */
export interface IndexedIdFile {
  readonly key: string;
  readonly index: IdFileIndex;
}

/** How far {@link readIdFilesAhead} reads ahead: files at once, and their bytes in all. */
export const READ_AHEAD = { files: 16, bytes: 8 * 1024 * 1024 } as const;

/**
 * The entries of partitions [p0, p1) of every file, file after file in the order given (so each id's uses
 * come as the files hold them), with the reads of the next files already under way: up to
 * {@link READ_AHEAD} files whose ranges fit in its bytes, each held whole once read. A range larger than
 * that is streamed when its turn comes. A dataset of many small objects has an id file for each, and read
 * one after another their round trips, not their bytes, took the time.
 */
export async function* readIdFilesAhead(
  blobs: BlobStore,
  files: readonly IndexedIdFile[],
  p0: number,
  p1: number,
  ahead: { readonly files: number; readonly bytes: number } = READ_AHEAD,
): AsyncGenerator<IdEntry> {
  const bytesOf = (file: IndexedIdFile) => rangeOf(file.index, p0, p1).bytes;
  const queue: { file: IndexedIdFile; read: Promise<Uint8Array> | null }[] = [];
  let queuedBytes = 0;
  let next = 0;
  const fill = () => {
    while (next < files.length && queue.length < ahead.files) {
      const file = files[next] as IndexedIdFile;
      const bytes = bytesOf(file);
      if (bytes > ahead.bytes) {
        if (queue.length > 0) return; // streamed in its turn, once those before it are given
        queue.push({ file, read: null });
        next += 1;
        return;
      }
      if (queue.length > 0 && queuedBytes + bytes > ahead.bytes) return;
      const read = readWhole(blobs, file, p0, p1);
      read.catch(() => {}); // rejects where it is awaited, in its turn
      queue.push({ file, read });
      queuedBytes += bytes;
      next += 1;
    }
  };
  try {
    fill();
    for (let head = queue.shift(); head; head = queue.shift()) {
      if (head.read === null) {
        yield* readIdPartitions(blobs, head.file.key, head.file.index, p0, p1);
      } else {
        const bytes = await head.read;
        queuedBytes -= bytesOf(head.file);
        fill();
        yield* entriesIn(bytes);
      }
      fill();
    }
  } finally {
    queue.length = 0; // reads still under way are let go; their rejections are already caught
  }
}

/** The byte range of partitions [p0, p1) in an id file. */
function rangeOf(index: IdFileIndex, p0: number, p1: number): { start: number; bytes: number } {
  const start = index.offsets[p0] ?? 0;
  const end = index.offsets[Math.min(p1, index.partitions)] ?? start;
  return { start, bytes: Math.max(0, end - start) };
}

/** Partitions [p0, p1) of an id file, read whole. */
async function readWhole(blobs: BlobStore, file: IndexedIdFile, p0: number, p1: number): Promise<Uint8Array> {
  const { start, bytes } = rangeOf(file.index, p0, p1);
  const read = await readRange(blobs, file.key, start, bytes);
  if (read.length < bytes)
    throw new Error(`id file ${file.key} ended ${bytes - read.length} bytes before its index says`);
  return read;
}

/**
 * The entries of whole id file lines, each line decoded on its own: an id is a slice of its line's
 * string, and a kept id (a duplicate Settle holds) must not keep a whole read's text alive with it.
 */
function* entriesIn(bytes: Uint8Array): Generator<IdEntry> {
  let from = 0;
  for (let newline = bytes.indexOf(NEWLINE); newline !== -1; newline = bytes.indexOf(NEWLINE, from)) {
    yield parseEntryLine(utf8.decode(bytes.subarray(from, newline)));
    from = newline + 1;
  }
  if (from < bytes.length) yield parseEntryLine(utf8.decode(bytes.subarray(from)));
}

const NEWLINE = 0x0a;
const utf8 = new TextDecoder();

/**
 * The entries of partitions [p0, p1) of an id file: one ranged read of offsets[p0] to offsets[p1],
 * streamed line by line.
 */
export async function* readIdPartitions(
  blobs: BlobStore,
  idFileKey: string,
  index: IdFileIndex,
  p0: number,
  p1: number,
): AsyncGenerator<IdEntry> {
  const { start, bytes } = rangeOf(index, p0, p1);
  if (bytes === 0) return;
  let remaining = bytes;
  // The bytes of a line cut by a chunk's end; lines are decoded whole, one by one (see entriesIn).
  let pending: Uint8Array = new Uint8Array(0);
  for await (const chunk of blobs.read(idFileKey, start, undefined, start + bytes)) {
    const piece = chunk.length > remaining ? chunk.subarray(0, remaining) : chunk;
    remaining -= piece.length;
    const joined = pending.length > 0 ? Buffer.concat([pending, piece]) : piece;
    const last = joined.lastIndexOf(NEWLINE);
    if (last === -1) {
      pending = Buffer.from(joined);
    } else {
      yield* entriesIn(joined.subarray(0, last + 1));
      pending = Buffer.from(joined.subarray(last + 1)); // copied: the producer may reuse its chunk
    }
    if (remaining === 0) break;
  }
  if (remaining > 0) throw new Error(`id file ${idFileKey} ended ${remaining} bytes before its index says`);
  if (pending.length > 0) yield* entriesIn(pending);
}
