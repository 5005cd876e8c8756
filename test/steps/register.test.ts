import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3BlobStore } from '../../functions/adapters/s3-blob-store';
import { DatasetError } from '../../functions/core/errors';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import { datasetHash, datasetObjects, eventKey, MAX_OBJECTS } from '../../functions/steps/register';
import { type LocalS3, startS3 } from '../../local/stand-ins';

let s3: LocalS3;
let dir: string;
let deps: StepDeps<unknown>;
const put = (key: string, body: string) =>
  s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-register-'));
  s3 = await startS3(dir, 'register-test');
  // Only the blob store is used by these functions; the rest of the dependencies are never called.
  deps = {
    blobs: new S3BlobStore(s3.client, s3.bucket),
    log: () => {},
    bucket: s3.bucket,
    work: defineWork({ name: 'r' }),
  } as unknown as StepDeps<unknown>;
});

afterAll(async () => {
  await s3?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('the dataset a run reads', () => {
  it('is the object at the key, or the non-empty objects under a prefix ending in /, in key order', async () => {
    await put('in/one.jsonl', '{"id":1}\n');
    await put('in/many/b.jsonl', '{"id":2}\n');
    await put('in/many/a.jsonl', '{"id":1}\n');
    await put('in/many/empty.jsonl', '');
    expect((await datasetObjects(deps, 'in/one.jsonl')).map((o) => o.key)).toEqual(['in/one.jsonl']);
    expect((await datasetObjects(deps, 'in/many/')).map((o) => o.key)).toEqual([
      'in/many/a.jsonl',
      'in/many/b.jsonl',
    ]);
  });

  it('is refused, naming the location, when nothing is there', async () => {
    await expect(datasetObjects(deps, 'in/nothing.jsonl')).rejects.toThrow(
      new DatasetError(
        'No dataset at s3://register-test/in/nothing.jsonl: no such object, and no objects under it as a prefix.',
      ),
    );
  });

  it('is exactly the key given: an object is that object, never others that share its beginning', async () => {
    await put('exact/data', '{"id":"now"}\n');
    await put('exact/data-old.jsonl', '{"id":"old"}\n');
    await put('exact/data/inside.jsonl', '{"id":"inside"}\n');
    expect((await datasetObjects(deps, 'exact/data')).map((o) => o.key)).toEqual(['exact/data']);
    expect((await datasetObjects(deps, 'exact/data/')).map((o) => o.key)).toEqual([
      'exact/data/inside.jsonl',
    ]);
  });

  it('is not a prefix unless asked for with a trailing /, and the refusal suggests the / form', async () => {
    await put('loose/data-old.jsonl', '{"id":"old"}\n');
    await put('loose/set/a.jsonl', '{"id":"a"}\n');
    await expect(datasetObjects(deps, 'loose/data')).rejects.toThrow(
      new DatasetError(
        'No dataset at s3://register-test/loose/data: no such object (keys that start with it: loose/data-old.jsonl). Give a whole key, or a prefix ending in "/".',
      ),
    );
    await expect(datasetObjects(deps, 'loose/set')).rejects.toThrow(
      new DatasetError(
        'No dataset at s3://register-test/loose/set: no such object. Objects are under it as a prefix: give "s3://register-test/loose/set/" (with the trailing /) to read every object under it.',
      ),
    );
    expect((await datasetObjects(deps, 'loose/set/')).map((o) => o.key)).toEqual(['loose/set/a.jsonl']);
  });

  it(`is refused when a prefix holds more than ${MAX_OBJECTS} objects`, async () => {
    const keys = Array.from(
      { length: MAX_OBJECTS + 1 },
      (_, i) => `wide/${String(i).padStart(5, '0')}.jsonl`,
    );
    for (let i = 0; i < keys.length; i += 100)
      await Promise.all(keys.slice(i, i + 100).map((k) => put(k, '{}\n')));
    await expect(datasetObjects(deps, 'wide/')).rejects.toThrow(
      /holds more than 1000 objects; a run reads at most 1000\. Combine them/,
    );
  });

  it('is identified by its content, whatever its key', async () => {
    await put('x/copy-1.jsonl', '{"id":"same"}\n');
    await put('x/copy-2.jsonl', '{"id":"same"}\n');
    await put('x/other.jsonl', '{"id":"other"}\n');
    const hash = async (key: string) => datasetHash(deps, await datasetObjects(deps, key));
    expect(await hash('x/copy-1.jsonl')).toBe(await hash('x/copy-2.jsonl'));
    expect(await hash('x/copy-1.jsonl')).not.toBe(await hash('x/other.jsonl'));
    expect(await hash('x/copy-1.jsonl')).toMatch(/^sha256:[0-9a-f]{64}$/);
  });
});

describe('an S3 event key (autoStart)', () => {
  it('is the key as it came when that object exists, else its URL-decoded form', async () => {
    await put('ev/red flower.jsonl', '{"id":1}\n');
    await put('ev/c++.jsonl', '{"id":1}\n');
    await put('ev/100%.jsonl', '{"id":1}\n');
    await put('ev/données é.jsonl', '{"id":1}\n');
    // Encoded as S3 encodes keys for SNS, SQS and Lambda.
    expect(await eventKey(deps, 'ev/red+flower.jsonl')).toBe('ev/red flower.jsonl');
    expect(await eventKey(deps, 'ev/c%2B%2B.jsonl')).toBe('ev/c++.jsonl');
    expect(await eventKey(deps, 'ev/100%25.jsonl')).toBe('ev/100%.jsonl');
    expect(await eventKey(deps, 'ev/donn%C3%A9es+%C3%A9.jsonl')).toBe('ev/données é.jsonl');
    // As EventBridge documents them: the key itself, even where it reads as encoding.
    expect(await eventKey(deps, 'ev/c++.jsonl')).toBe('ev/c++.jsonl');
    expect(await eventKey(deps, 'ev/100%.jsonl')).toBe('ev/100%.jsonl');
    expect(await eventKey(deps, 'ev/red flower.jsonl')).toBe('ev/red flower.jsonl');
    // Neither exists: the key as it came, for the "No dataset" message.
    expect(await eventKey(deps, 'ev/none+here.jsonl')).toBe('ev/none+here.jsonl');
    expect(
      (await datasetObjects(deps, await eventKey(deps, 'ev/red+flower.jsonl'))).map((o) => o.key),
    ).toEqual(['ev/red flower.jsonl']);
  });
});
