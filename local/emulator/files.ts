import { createReadStream, createWriteStream, existsSync, mkdirSync, rmSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ApiError, notFound } from './api-error';
import type { Clock } from './clock';
import { unixSeconds } from './clock';
import type { Ids } from './random';

/** Purposes a file may be uploaded with. */
export const UPLOAD_PURPOSES = ['assistants', 'batch', 'fine-tune', 'vision', 'user_data', 'evals'] as const;

/** A file as OpenAI describes it. */
export interface FileObject {
  id: string;
  object: 'file';
  bytes: number;
  created_at: number;
  /** Null for an uploaded file that is not a batch input and was given no `expires_after`: it stays. */
  expires_at: number | null;
  filename: string;
  purpose: string;
  status: 'processed';
  status_details: null;
}

const DEFAULT_EXPIRY_SECONDS = 30 * 24 * 3600;

/**
 * Files kept on disk (never in memory), their descriptions in a map that the emulator persists with the
 * rest of its state.
 */
export class FileStore {
  readonly files = new Map<string, FileObject>();

  constructor(
    private readonly dir: string,
    private readonly clock: Clock,
    private readonly ids: Ids,
  ) {
    mkdirSync(dir, { recursive: true });
  }

  private path(id: string): string {
    return join(this.dir, id);
  }

  /** A file by id, if it exists and has not expired. */
  get(id: string): FileObject {
    const file = this.files.get(id);
    if (!file || (file.expires_at !== null && file.expires_at <= unixSeconds(this.clock.now())))
      throw notFound('file', id);
    return file;
  }

  /** True when the id names a live file. */
  has(id: string): boolean {
    try {
      this.get(id);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Stores a stream as a new file, refusing it once it passes `maxBytes` (the partial file is removed).
   */
  async write(
    body: AsyncIterable<Uint8Array | string> | Readable,
    meta: { filename: string; purpose: string; expiresAfterSeconds?: number | undefined },
    maxBytes = Number.POSITIVE_INFINITY,
  ): Promise<FileObject> {
    const id = this.ids.file();
    let bytes = 0;
    const counter = new Transform({
      transform(chunk: Buffer | string, _encoding, done) {
        bytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length;
        if (bytes > maxBytes)
          done(new ApiError(400, 'File is too large.', 'invalid_request_error', null, 'file'));
        else done(null, chunk);
      },
    });
    try {
      await pipeline(body, counter, createWriteStream(this.path(id)));
    } catch (caught) {
      await unlink(this.path(id)).catch(() => {});
      throw caught;
    }
    const created = unixSeconds(this.clock.now());
    const file: FileObject = {
      id,
      object: 'file',
      bytes,
      created_at: created,
      expires_at: created + (meta.expiresAfterSeconds ?? DEFAULT_EXPIRY_SECONDS),
      filename: meta.filename,
      purpose: meta.purpose,
      status: 'processed',
      status_details: null,
    };
    this.files.set(id, file);
    return file;
  }

  /** A file's bytes as a stream. */
  read(id: string): Readable {
    this.get(id);
    return createReadStream(this.path(id), { highWaterMark: 256 * 1024 });
  }

  /** Removes a file. */
  async delete(id: string): Promise<void> {
    this.get(id);
    this.files.delete(id);
    await unlink(this.path(id)).catch(() => {});
  }

  /** Live files, newest first unless `order` is asc. */
  list(purpose?: string, order: 'asc' | 'desc' = 'desc'): FileObject[] {
    const now = unixSeconds(this.clock.now());
    const live = [...this.files.values()].filter(
      (f) => (f.expires_at === null || f.expires_at > now) && (!purpose || f.purpose === purpose),
    );
    return order === 'asc' ? live : live.reverse();
  }

  /** Forgets descriptions whose bytes are gone (a data directory edited by hand). */
  prune(): void {
    for (const id of this.files.keys()) if (!existsSync(this.path(id))) this.files.delete(id);
  }

  /** Deletes every stored byte (a temporary store at shutdown). */
  destroy(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
