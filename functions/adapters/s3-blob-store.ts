import { Readable } from 'node:stream';
import {
  DeleteObjectsCommand,
  GetObjectCommand,
  type GetObjectCommandOutput,
  HeadObjectCommand,
  ListObjectsCommand,
  PutObjectTaggingCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
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
 * A {@link BlobStore} on one S3 bucket: streamed reads (from a byte offset), streamed multipart writes
 * that hold one 5 MiB part at a time, listing and batched deletes.
 */
export class S3BlobStore implements BlobStore {
  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
  ) {}

  async *read(key: string, start = 0): AsyncGenerator<Uint8Array> {
    let response: GetObjectCommandOutput;
    try {
      response = await this.s3.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: key,
          ...(start > 0 ? { Range: `bytes=${start}-` } : {}),
        }),
      );
    } catch (caught) {
      if ((caught as { name?: string }).name === 'InvalidRange') return; // reading from the very end
      throw caught;
    }
    for await (const chunk of response.Body as Readable) yield chunk as Uint8Array;
  }

  async write(key: string, body: AsyncIterable<Uint8Array>): Promise<number> {
    let bytes = 0;
    async function* counted(): AsyncGenerator<Uint8Array> {
      for await (const chunk of body) {
        bytes += chunk.length;
        yield chunk;
      }
    }
    const upload = new Upload({
      client: this.s3,
      params: { Bucket: this.bucket, Key: key, Body: Readable.from(counted()) },
      partSize: 5 * 1024 * 1024,
      queueSize: 1,
      // Tagged after the upload (PutObjectTagging): running, until its run's end marks it for the lifecycle rule.
      ...(isIntermediateKey(key)
        ? { tags: [{ Key: INTERMEDIATE_TAG.key, Value: INTERMEDIATE_TAG.running }] }
        : {}),
    });
    await upload.done();
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
      await this.s3.send(
        new DeleteObjectsCommand({
          Bucket: this.bucket,
          Delete: { Objects: slice.map((Key) => ({ Key })), Quiet: true },
        }),
      );
    }
  }
}
