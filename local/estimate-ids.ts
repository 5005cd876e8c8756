import { closeSync, createReadStream, existsSync, openSync, readSync } from 'node:fs';
import { appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FingerprintTable } from '../functions/core/dedup';
import { IdFileBuilder, parseEntryLine, partitionOf } from '../functions/core/id-files';
import { fingerprint } from '../functions/core/ids';
import { linesOf } from '../functions/core/lines';

/** Bytes of a duplicate in a partition's file of them: its request number, its id's hash, the first use's line. */
const DUPLICATE_BYTES = 12;
/** Duplicates a partition's cursor reads at once. */
const CURSOR_DUPLICATES = 512;

/** Thrown when the second read of a dataset does not give the requests the first gave. */
export class UnstableUploadError extends Error {
  constructor() {
    super(
      'estimate reads the dataset twice when ids are used on several lines, and the work’s upload hook gave other requests the second time: estimate needs an upload hook that gives the same requests for the same record',
    );
    this.name = 'UnstableUploadError';
  }
}

/**
 * The custom_ids of an estimate, checked as a run checks them, with memory that does not grow with the
 * dataset. The first read numbers every request that reaches its id check and writes its id entry to a
 * file of its partition (entries are held `entriesHeld` at a time). `findDuplicates` then reads each
 * partition's file twice (fingerprints first, then the ids seen twice, exactly) and writes every use after
 * the first to the partition's file of duplicates, in request order. The second read, when there are any,
 * refuses each of them as it comes, reading each partition's duplicates a few hundred at a time.
 *
 * Memory: `entriesHeld` entries, one partition's fingerprints and repeated ids at a time, and a small
 * buffer a partition in the second read.
 */
export class EstimateIds {
  private readonly builder: IdFileBuilder;
  private flushing: Promise<void> | null = null;
  private cursors: DuplicateCursor[] = [];

  constructor(
    private readonly dir: string,
    private readonly partitions: number,
    private readonly entriesHeld: number,
  ) {
    this.builder = new IdFileBuilder(partitions);
  }

  private entriesFile(p: number): string {
    return join(this.dir, `ids-${p}`);
  }

  private duplicatesFile(p: number): string {
    return join(this.dir, `duplicates-${p}`);
  }

  /** First read: the request numbered `seq`, of id `id`, from dataset line `line`. */
  record(id: string, line: number, seq: number): void {
    this.builder.add({ id, shard: 0, line, part: seq, bytes: 0, tokens: 0 });
    if (this.builder.size >= this.entriesHeld && !this.flushing)
      this.flushing = this.flush().finally(() => {
        this.flushing = null;
      });
  }

  /** What the first read waits for before its next record: a write of held entries, when one runs. */
  pending(): Promise<void> | undefined {
    return this.flushing ?? undefined;
  }

  private async flush(): Promise<void> {
    const { body, index } = this.builder.take();
    const held: Uint8Array[] = [];
    for await (const piece of body) held.push(piece);
    const all = Buffer.concat(held);
    for (let p = 0; p < this.partitions; p++) {
      const from = index.offsets[p] ?? 0;
      const to = index.offsets[p + 1] ?? from;
      if (to > from) await appendFile(this.entriesFile(p), all.subarray(from, to));
    }
  }

  /** After the first read: finds the duplicates of every partition; resolves to how many there are. */
  async findDuplicates(): Promise<number> {
    await this.settled();
    if (this.builder.size > 0) await this.flush();
    let count = 0;
    for (let p = 0; p < this.partitions; p++) count += await this.partitionDuplicates(p);
    this.cursors = Array.from(
      { length: this.partitions },
      (_, p) => new DuplicateCursor(this.duplicatesFile(p)),
    );
    return count;
  }

  /** Entries of a partition's file in request order (the order they were written in). */
  private async *entries(p: number) {
    const file = this.entriesFile(p);
    if (!existsSync(file)) return;
    for await (const raw of linesOf(createReadStream(file), Number.MAX_SAFE_INTEGER))
      if (raw.bytes && raw.bytes.length > 0) yield parseEntryLine(Buffer.from(raw.bytes).toString('utf8'));
  }

  private async partitionDuplicates(p: number): Promise<number> {
    const table = new FingerprintTable(1024);
    for await (const entry of this.entries(p)) table.add(entry.id);
    if (!table.repeated) return 0;
    // The first use of each id seen twice, by exact id; every later use is a duplicate of it.
    const firstLine = new Map<string, number>();
    const out = Buffer.allocUnsafe(CURSOR_DUPLICATES * DUPLICATE_BYTES);
    let used = 0;
    let count = 0;
    for await (const entry of this.entries(p)) {
      if (!table.seenTwice(entry.id)) continue;
      const first = firstLine.get(entry.id);
      if (first === undefined) {
        firstLine.set(entry.id, entry.line);
        continue;
      }
      out.writeUInt32LE(entry.part, used);
      out.writeUInt32LE(fingerprint(entry.id)[1], used + 4);
      out.writeUInt32LE(first, used + 8);
      used += DUPLICATE_BYTES;
      count += 1;
      if (used === out.length) {
        await appendFile(this.duplicatesFile(p), out);
        used = 0;
      }
    }
    if (used > 0) await appendFile(this.duplicatesFile(p), out.subarray(0, used));
    return count;
  }

  /**
   * Second read: 0 when the request numbered `seq` is the first use of its id, else the line of the first
   * use. Throws {@link UnstableUploadError} when the requests are not those of the first read.
   */
  refusal(id: string, seq: number): number {
    const cursor = this.cursors[partitionOf(id, this.partitions)];
    const next = cursor?.peek();
    if (!cursor || !next || next.seq > seq) return 0;
    if (next.seq < seq || next.hash !== fingerprint(id)[1]) throw new UnstableUploadError();
    cursor.advance();
    return next.firstLine;
  }

  /** After the second read: every duplicate was met (else the reads differed). */
  checkAllMet(): void {
    if (this.cursors.some((cursor) => cursor.peek() !== null)) throw new UnstableUploadError();
  }

  /** Waits for a write still running, whatever its end (before the directory is removed). */
  async settled(): Promise<void> {
    await this.flushing;
  }

  close(): void {
    for (const cursor of this.cursors) cursor.close();
  }
}

/** A partition's duplicates, read from its file a few hundred at a time, in request order. */
class DuplicateCursor {
  private fd: number | null = null;
  private readonly buffer = Buffer.allocUnsafe(CURSOR_DUPLICATES * DUPLICATE_BYTES);
  private filled = 0;
  private at = 0;
  private position = 0;
  private ended = false;

  constructor(private readonly file: string) {}

  peek(): { seq: number; hash: number; firstLine: number } | null {
    if (this.at >= this.filled && !this.refill()) return null;
    return {
      seq: this.buffer.readUInt32LE(this.at),
      hash: this.buffer.readUInt32LE(this.at + 4),
      firstLine: this.buffer.readUInt32LE(this.at + 8),
    };
  }

  advance(): void {
    this.at += DUPLICATE_BYTES;
  }

  private refill(): boolean {
    if (this.ended) return false;
    if (this.fd === null) {
      if (!existsSync(this.file)) {
        this.ended = true;
        return false;
      }
      this.fd = openSync(this.file, 'r');
    }
    this.filled = readSync(this.fd, this.buffer, 0, this.buffer.length, this.position);
    this.position += this.filled;
    this.at = 0;
    if (this.filled === 0) this.ended = true;
    return this.filled > 0;
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}
