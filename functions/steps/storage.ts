import { LineWriter } from '../core/channel';
import type { PartSummary } from '../core/chunker';
import type { BlobStore } from '../core/ports';
import type { PartSink, RecordSink } from '../core/prepare';
import type { PreparedRequest } from '../core/requests';
import { runKeys } from '../core/run';

/**
 * A JSONL object in the store, opened on its first line. One that got no line is removed on close rather
 * than left as it was: an earlier attempt of the same step (one that crashed, and read further) may have
 * written it, and its lines must not stay beside the ones the next step writes. (An S3 DELETE costs
 * nothing, and readers never see an empty file.)
 */
export class LazyJsonl implements RecordSink {
  private writer: LineWriter | null = null;

  constructor(
    private readonly blobs: BlobStore,
    private readonly key: string,
  ) {}

  /** Lines written so far. */
  get lines(): number {
    return this.writer?.lines ?? 0;
  }

  /** Appends a line that is already JSON. */
  async write(line: string): Promise<void> {
    this.writer ??= new LineWriter((body) => this.blobs.write(this.key, body));
    await this.writer.write(line);
  }

  async close(): Promise<void> {
    if (this.writer) await this.writer.close();
    else await this.blobs.delete([this.key]);
  }
}

/** Part files in the store: each part's request lines, and beside them the dataset line of each request. */
export class StoredParts implements PartSink {
  private readonly open = new Map<number, { requests: LazyJsonl; lines: LazyJsonl }>();

  constructor(
    private readonly blobs: BlobStore,
    private readonly runId: string,
  ) {}

  private files(part: number) {
    let files = this.open.get(part);
    if (!files) {
      const keys = runKeys(this.runId);
      files = {
        requests: new LazyJsonl(this.blobs, keys.requests(part)),
        lines: new LazyJsonl(this.blobs, keys.lines(part)),
      };
      this.open.set(part, files);
    }
    return files;
  }

  async write(part: number, request: PreparedRequest): Promise<void> {
    const files = this.files(part);
    await files.requests.write(request.json);
    await files.lines.write(String(request.line));
  }

  /** Appends a request that is sent again (a resubmission part). */
  async writeRaw(part: number, json: string, line: number): Promise<void> {
    const files = this.files(part);
    await files.requests.write(json);
    await files.lines.write(String(line));
  }

  async close(summary: Pick<PartSummary, 'part'>): Promise<void> {
    const files = this.open.get(summary.part);
    this.open.delete(summary.part);
    await Promise.all([files?.requests.close(), files?.lines.close()]);
  }
}

/** An object's bytes, whole: for the small state objects (the id registry) only. */
export async function readAll(blobs: BlobStore, key: string): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of blobs.read(key)) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** Stores bytes as one object. */
export async function writeAll(blobs: BlobStore, key: string, bytes: Uint8Array | string): Promise<void> {
  async function* one(): AsyncGenerator<Uint8Array> {
    yield typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
  }
  await blobs.write(key, one());
}
