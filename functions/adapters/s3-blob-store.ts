import type { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  type CompletedPart,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  type GetObjectCommandOutput,
  HeadObjectCommand,
  ListObjectsCommand,
  PutObjectCommand,
  PutObjectTaggingCommand,
  type S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { DatasetError } from '../core/errors';
import type { BlobInfo, BlobStore, IntermediateMark } from '../core/ports';
import { isIntermediateKey } from '../core/run';

/** True for S3's "no such key" in its several shapes. */
function isMissing(caught: unknown): boolean {
  const error = caught as { name?: string; $metadata?: { httpStatusCode?: number } };
  return (
    error?.name === 'NoSuchKey' || error?.name === 'NotFound' || error?.$metadata?.httpStatusCode === 404
  );
}

/**
 * The tag on intermediate objects (request files, checkpoints): `running` from their writing, `ended` once
 * their run has ended. The bucket's lifecycle rule expires only `ended` ones, so a run that lasts longer
 * than the rule's days never loses a request file it has still to send.
 */
export const INTERMEDIATE_TAG = {
  key: 'openai-batch-intermediate',
  running: 'running',
  ended: 'ended',
} as const satisfies { key: string } & Record<IntermediateMark, IntermediateMark>;

/**
 * The command with its body left out of its SigV4 signature (`x-amz-content-sha256: UNSIGNED-PAYLOAD`).
 * The signer would otherwise hash every byte written, on the writer's own thread: a tenth of a prepare
 * step's CPU. S3 accepts it (over TLS), and where checksums are on (S3's default) the SDK still sends the
 * body's CRC32, which S3 checks.
 */
function unsignedPayload(command: PutObjectCommand): PutObjectCommand;
function unsignedPayload(command: UploadPartCommand): UploadPartCommand;
function unsignedPayload(
  command: PutObjectCommand | UploadPartCommand,
): PutObjectCommand | UploadPartCommand {
  // The middleware reads and sets the request's headers only, the same for both commands.
  (command.middlewareStack as PutObjectCommand['middlewareStack']).add(
    (next) => (args) => {
      const request = args.request as { headers?: Record<string, string> };
      if (request.headers) request.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      return next(args);
    },
    { step: 'build', name: 'openaiBatchUnsignedPayload' },
  );
  return command;
}

/** The size of an upload's first parts: S3's smallest but for the last. */
const PART_BYTES = 5 * 1024 * 1024;

/**
 * How large an upload's parts are, by part number, and how many it may have. S3 takes at most 10,000
 * parts: at 5 MiB all through, an object stopped at 48.8 GiB (an inflated gzip dataset, a dataset the CLI
 * uploads). Later parts are larger, so that an object may reach 283 GiB while one under 9.8 GiB is sent in
 * 5 MiB parts (the writer holds two part buffers: 80 MiB at most, past 48.8 GiB).
 */
export interface PartSizes {
  readonly bytes: (partNumber: number) => number;
  readonly most: number;
}

export const PART_SIZES: PartSizes = {
  bytes: (n) => (n <= 2000 ? PART_BYTES : n <= 4000 ? 4 * PART_BYTES : 8 * PART_BYTES),
  most: 10_000,
};
/** A body up to this size is sent as the chunks it came in; a larger one is copied into a part buffer. */
const SMALL_BYTES = 64 * 1024;
/** Part buffers a process keeps for its next uploads. */
const SPARE_PIECES = 4;
const spare: Buffer[] = [];

/**
 * A part buffer, reused from an earlier upload when there is one: a write that made a new 5 MiB buffer
 * (and dropped the writer's chunks after a copy of them) each time left tens of MiB of dead array buffers
 * for the collector's next full pass, which is what bounded a step's memory.
 */
function takePieceBuffer(bytes: number): Buffer {
  if (bytes !== PART_BYTES) return Buffer.allocUnsafeSlow(bytes); // the rare large part: not kept
  return spare.pop() ?? Buffer.allocUnsafeSlow(PART_BYTES);
}

function givePieceBuffer(piece: Buffer): void {
  if (piece.length === PART_BYTES && spare.length < SPARE_PIECES) spare.push(piece);
}

/**
 * One object's upload from its chunks: those of a small body are sent as they came, in one PutObject;
 * past SMALL_BYTES they are copied into a part buffer, sent as a part of a multipart upload each time it is
 * full and more bytes follow (so a body of one part or less is still one PutObject). A full part is sent
 * while the next one fills: at most one part is in flight and two buffers are held, so the writer does not
 * wait on S3 but for a part that took longer to send than the next took to fill.
 */
class PartUpload {
  private small: Uint8Array[] = [];
  private smallBytes = 0;
  private piece: Buffer | null = null;
  private used = 0;
  private uploadId: string | null = null;
  /** Parts sent or being sent. */
  private started = 0;
  private readonly parts: CompletedPart[] = [];
  /** The part being sent, if any: it settles once S3 has it (or has refused it). */
  private sending: Promise<void> | null = null;

  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
    private readonly key: string,
    private readonly sizes: PartSizes,
  ) {}

  async add(chunk: Uint8Array): Promise<void> {
    if (!this.piece && this.smallBytes + chunk.length <= SMALL_BYTES) {
      this.small.push(chunk);
      this.smallBytes += chunk.length;
      return;
    }
    if (!this.piece) {
      this.piece = takePieceBuffer(this.sizes.bytes(1));
      for (const held of this.small) await this.fill(held);
      this.small = [];
    }
    await this.fill(chunk);
  }

  /** Copies bytes into the part buffer, sending it each time it is full and more bytes follow. */
  private async fill(chunk: Uint8Array): Promise<void> {
    let from = 0;
    while (from < chunk.length) {
      if (this.piece && this.used === this.piece.length) await this.startPart();
      const piece = this.piece ?? takePieceBuffer(this.sizes.bytes(this.started + 1));
      this.piece = piece;
      const n = Math.min(piece.length - this.used, chunk.length - from);
      piece.set(chunk.subarray(from, from + n), this.used);
      this.used += n;
      from += n;
    }
  }

  /**
   * Waits for the part in flight, then sends the full buffer in the background; the next bytes go to
   * another buffer. A failed send is thrown by the next wait (here, in `end` or in `abort`).
   */
  private async startPart(): Promise<void> {
    await this.settled();
    const piece = this.piece;
    if (!piece) return;
    if (this.uploadId === null) {
      const checksum = (await this.s3.config.requestChecksumCalculation()) === 'WHEN_SUPPORTED';
      const created = await this.s3.send(
        new CreateMultipartUploadCommand({
          Bucket: this.bucket,
          Key: this.key,
          ...(checksum ? { ChecksumAlgorithm: 'CRC32' } : {}),
        }),
      );
      if (!created.UploadId) throw new Error(`S3 gave no upload id for ${this.key}`);
      this.uploadId = created.UploadId;
    }
    if (this.started === this.sizes.most)
      throw new Error(
        `${this.key} is larger than an upload can be here: ${this.sizes.most} parts, ${(this.bytesOfParts() / 1024 ** 3).toFixed(1)} GiB, and more bytes follow`,
      );
    this.started += 1;
    const sending = this.sendPart(this.uploadId, this.started, piece, this.used);
    // Handled here so that a failure between two waits is not an unhandled rejection; the next wait throws it.
    sending.catch(() => {});
    this.sending = sending;
    this.piece = null;
    this.used = 0;
  }

  /** The bytes the upload's parts hold when all are full. */
  private bytesOfParts(): number {
    let bytes = 0;
    for (let n = 1; n <= this.sizes.most; n++) bytes += this.sizes.bytes(n);
    return bytes;
  }

  /** Waits for the part in flight, if any, and throws its failure. */
  private async settled(): Promise<void> {
    const sending = this.sending;
    this.sending = null;
    if (sending) await sending;
  }

  private async sendPart(UploadId: string, PartNumber: number, piece: Buffer, used: number): Promise<void> {
    const sent = await this.s3.send(
      unsignedPayload(
        new UploadPartCommand({
          Bucket: this.bucket,
          Key: this.key,
          UploadId,
          PartNumber,
          Body: piece.subarray(0, used),
        }),
      ),
    );
    if (!sent.ETag) throw new Error(`S3 gave no ETag for part ${PartNumber} of ${this.key}`);
    this.parts.push({
      PartNumber,
      ETag: sent.ETag,
      ...(sent.ChecksumCRC32 ? { ChecksumCRC32: sent.ChecksumCRC32 } : {}),
      ...(sent.ChecksumCRC32C ? { ChecksumCRC32C: sent.ChecksumCRC32C } : {}),
      ...(sent.ChecksumCRC64NVME ? { ChecksumCRC64NVME: sent.ChecksumCRC64NVME } : {}),
      ...(sent.ChecksumSHA1 ? { ChecksumSHA1: sent.ChecksumSHA1 } : {}),
      ...(sent.ChecksumSHA256 ? { ChecksumSHA256: sent.ChecksumSHA256 } : {}),
    });
    givePieceBuffer(piece);
  }

  /** Sends what is left and completes the object; its part buffers go back to the pool. */
  async end(): Promise<void> {
    const target = { Bucket: this.bucket, Key: this.key };
    if (this.uploadId === null) {
      const whole = this.piece
        ? this.piece.subarray(0, this.used)
        : ((this.small.length === 1 ? this.small[0] : undefined) ?? Buffer.concat(this.small));
      await this.s3.send(unsignedPayload(new PutObjectCommand({ ...target, Body: whole })));
      if (this.piece) givePieceBuffer(this.piece);
    } else {
      await this.startPart();
      await this.settled();
      await this.s3.send(
        new CompleteMultipartUploadCommand({
          ...target,
          UploadId: this.uploadId,
          // In order: a part is sent only once the one before it is in.
          MultipartUpload: { Parts: this.parts },
        }),
      );
      this.uploadId = null;
    }
    this.piece = null;
  }

  /** Drops the parts sent of an upload that failed (its part buffers are not reused: a request may hold one). */
  async abort(): Promise<void> {
    await this.settled().catch(() => {}); // the upload's own error is the one to report
    if (this.uploadId === null) return;
    const UploadId = this.uploadId;
    this.uploadId = null;
    await this.s3
      .send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: this.key, UploadId }))
      .catch(() => {}); // the upload's own error is the one to report
  }
}

/**
 * A {@link BlobStore} on one S3 bucket: streamed reads (from a byte offset), streamed writes that copy the
 * body into one 5 MiB part buffer (from a small pool) and send it each time it fills (a multipart upload;
 * a body of one part or less goes as one PutObject), listing and batched deletes.
 */
export class S3BlobStore implements BlobStore {
  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
    private readonly partSizes: PartSizes = PART_SIZES,
  ) {}

  async *read(key: string, start = 0, etag?: string, end?: number): AsyncGenerator<Uint8Array> {
    if (end !== undefined && end <= start) {
      if (etag) await this.sameVersion(key, etag);
      return;
    }
    const range = end !== undefined ? `bytes=${start}-${end - 1}` : start > 0 ? `bytes=${start}-` : undefined;
    let response: GetObjectCommandOutput;
    try {
      response = await this.s3.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: key,
          ...(range ? { Range: range } : {}),
          ...(etag ? { IfMatch: etag } : {}),
        }),
      );
    } catch (caught) {
      const name = (caught as { name?: string }).name;
      if (name === 'InvalidRange') {
        // Reading from the very end: nothing to give, if the object is still the version asked for.
        if (etag) await this.sameVersion(key, etag);
        return;
      }
      // Changed or gone: said as such. Else (back as it was by the HEAD) the GET's own error, retried.
      if (etag && (name === 'PreconditionFailed' || name === 'NoSuchKey')) await this.sameVersion(key, etag);
      throw caught;
    }
    // S3 refuses another version with If-Match; a stand-in may not, so the ETag served is compared too.
    if (etag && response.ETag !== undefined && !sameEtag(response.ETag, etag)) {
      (response.Body as Readable).destroy();
      throw changedObject(key, etag, response.ETag);
    }
    for await (const chunk of response.Body as Readable) yield chunk as Uint8Array;
  }

  /** Throws {@link changedObject} unless the object is there with this ETag. */
  private async sameVersion(key: string, etag: string): Promise<void> {
    const info = await this.head(key);
    if (!info || !sameEtag(info.etag, etag)) throw changedObject(key, etag, info?.etag ?? null);
  }

  async write(key: string, body: AsyncIterable<Uint8Array>): Promise<number> {
    const upload = new PartUpload(this.s3, this.bucket, key, this.partSizes);
    let bytes = 0;
    try {
      for await (const chunk of body) {
        bytes += chunk.length;
        await upload.add(chunk);
      }
      await upload.end();
    } catch (caught) {
      await upload.abort();
      throw caught;
    }
    // Tagged after the upload (PutObjectTagging): running, until its run's end marks it for the lifecycle rule.
    if (isIntermediateKey(key))
      await this.s3.send(
        new PutObjectTaggingCommand({
          Bucket: this.bucket,
          Key: key,
          Tagging: { TagSet: [{ Key: INTERMEDIATE_TAG.key, Value: INTERMEDIATE_TAG.running }] },
        }),
      );
    return bytes;
  }

  /** Replaces the object's intermediate tag; false when the object is gone (cleaned up or expired). */
  async markIntermediate(key: string, mark: IntermediateMark): Promise<boolean> {
    try {
      await this.s3.send(
        new PutObjectTaggingCommand({
          Bucket: this.bucket,
          Key: key,
          Tagging: { TagSet: [{ Key: INTERMEDIATE_TAG.key, Value: INTERMEDIATE_TAG[mark] }] },
        }),
      );
      return true;
    } catch (caught) {
      if (isMissing(caught)) return false;
      throw caught;
    }
  }

  async head(key: string): Promise<BlobInfo | null> {
    try {
      const head = await this.s3.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return { key, size: head.ContentLength ?? 0, etag: head.ETag ?? '' };
    } catch (caught) {
      if (isMissing(caught)) return null;
      throw caught;
    }
  }

  /**
   * Lists with ListObjects (v1), paging by the last key: v2's continuation tokens fail on s3rver under
   * OpenSSL 3, and v1 needs the same permission (s3:ListBucket) on S3.
   */
  async *list(prefix: string): AsyncGenerator<BlobInfo> {
    let marker: string | undefined;
    for (;;) {
      const page = await this.s3.send(
        new ListObjectsCommand({
          Bucket: this.bucket,
          Prefix: prefix,
          ...(marker ? { Marker: marker } : {}),
        }),
      );
      for (const object of page.Contents ?? []) {
        if (object.Key) yield { key: object.Key, size: object.Size ?? 0, etag: object.ETag ?? '' };
      }
      const last = page.Contents?.at(-1)?.Key;
      if (!page.IsTruncated || !last) return;
      marker = last;
    }
  }

  async delete(keys: readonly string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += 1000) {
      const slice = keys.slice(i, i + 1000);
      if (slice.length === 0) continue;
      const answer = await this.s3.send(
        new DeleteObjectsCommand({
          Bucket: this.bucket,
          Delete: { Objects: slice.map((Key) => ({ Key })), Quiet: true },
        }),
      );
      // S3 answers 200 with the keys it could not delete (AccessDenied, SlowDown, ...) listed: left alone,
      // they would be counted as deleted and never expire (their tag says running).
      const refused = answer.Errors ?? [];
      if (refused.length > 0) {
        const first = refused[0];
        throw new Error(
          `S3 did not delete ${refused.length} of ${slice.length} objects, the first ${first?.Key}: ${first?.Code} ${first?.Message ?? ''}`.trim(),
        );
      }
    }
  }
}

/** Whether two ETags name one version: S3 quotes them alike everywhere, some S3-compatible stores do not. */
function sameEtag(a: string, b: string): boolean {
  const bare = (etag: string) => etag.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
  return bare(a) === bare(b);
}

/**
 * A dataset object that is no longer the version a run listed: reading it on would mix two versions, or
 * drop the lines past the size the run planned, without a word.
 */
function changedObject(key: string, listed: string, now: string | null): DatasetError {
  const what = now === null ? 'is gone' : `has ETag ${now}`;
  return new DatasetError(
    `${key} changed after this run listed it (it had ETag ${listed}, and now ${what}). A run prepares its dataset as it was when the run started; start a new run to prepare it as it is now.`,
  );
}
