import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { S3BlobStore } from '../../functions/adapters/s3-blob-store';
import { type LocalEnvironment, type OpenAITarget, startLocalEnvironment } from '../../local/runner';
import { type LocalS3, startS3 } from '../../local/stand-ins';

/** The stand-ins a test file shares, set once its beforeAll has run. */
export interface SharedEnvironment {
  readonly env: LocalEnvironment;
}

/**
 * Starts the local environment (s3rver, DynamoDB Local and, unless `target` says otherwise, the
 * emulator) under a temporary directory named `<prefix>…` before the file's tests, and stops it and
 * removes the directory after them.
 */
export function localEnvironment(prefix: string, target?: OpenAITarget): SharedEnvironment {
  const shared = {} as { env: LocalEnvironment };
  let dir: string | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), prefix));
    shared.env = await startLocalEnvironment(dir, target);
  }, 60_000);
  afterAll(async () => {
    await shared.env?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return shared;
}

/** s3rver alone, with a blob store on its bucket, set once the file's beforeAll has run. */
export interface SharedS3 {
  readonly s3: LocalS3;
  readonly blobs: S3BlobStore;
}

/**
 * Starts s3rver with one bucket under a temporary directory named `<prefix>…` before the file's tests,
 * and stops it and removes the directory after them.
 */
export function localS3(prefix: string, bucket: string): SharedS3 {
  const shared = {} as { s3: LocalS3; blobs: S3BlobStore };
  let dir: string | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), prefix));
    shared.s3 = await startS3(dir, bucket);
    shared.blobs = new S3BlobStore(shared.s3.client, shared.s3.bucket);
  });
  afterAll(async () => {
    await shared.s3?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return shared;
}
