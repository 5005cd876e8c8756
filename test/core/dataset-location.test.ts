import {
  CreateBucketCommand,
  PutBucketNotificationConfigurationCommand,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3BlobStore } from '../../functions/adapters/s3-blob-store';
import { datasetLocation } from '../../functions/core/dataset-location';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import { datasetObjects } from '../../functions/steps/register';
import { autoStartRuleToQueue, type Moto, motoClientConfig, motoSqs, startMoto } from '../support/moto';

/** Keys a user's upload may have: a space, a `+`, a `%`, non-ASCII letters, a trailing space. */
const KEYS = [
  'inputs/w/my data.jsonl',
  'inputs/w/c++ questions.jsonl',
  'inputs/w/100% done.jsonl',
  'inputs/w/données é 日本.jsonl',
  'inputs/w/a%2Bb+c.jsonl',
  'inputs/w/ends in a space ',
];

describe('datasetLocation', () => {
  it.each(KEYS)('takes the key %j as it is, never URL-decoded, bare or as s3://', (key) => {
    expect(datasetLocation(key, 'b')).toEqual({ bucket: 'b', key });
    expect(datasetLocation(`s3://b/${key}`, 'b')).toEqual({ bucket: 'b', key });
  });

  it('drops what pasting adds: leading whitespace and a trailing line break', () => {
    expect(datasetLocation('  s3://b/inputs/x.jsonl\n', 'b')).toEqual({ bucket: 'b', key: 'inputs/x.jsonl' });
    expect(datasetLocation('\tinputs/x.jsonl\r\n', 'b')).toEqual({ bucket: 'b', key: 'inputs/x.jsonl' });
    expect(() => datasetLocation(' \n', 'b')).toThrow(/The dataset is empty/);
  });
});

describe("autoStart's key, from S3 through EventBridge (moto_server: S3, EventBridge, SQS)", () => {
  const bucket = 'autostart-keys';
  let moto: Moto;
  let s3: S3Client;
  /** SQS at moto: the autoStart rule's target here, to see what it started. */
  const sqs = (action: string, body: Record<string, unknown>) => motoSqs(moto.endpoint, action, body);

  beforeAll(async () => {
    moto = await startMoto();
    const aws = motoClientConfig(moto.endpoint);
    s3 = new S3Client({ ...aws, forcePathStyle: true });
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await s3.send(
      new PutBucketNotificationConfigurationCommand({
        Bucket: bucket,
        NotificationConfiguration: { EventBridgeConfiguration: {} },
      }),
    );
  }, 30_000);
  afterAll(() => moto?.stop());

  it('names the object that was uploaded, whatever its key holds', async () => {
    const QueueUrl = await autoStartRuleToQueue(moto.endpoint, bucket, 'w', 'created');
    for (const key of KEYS)
      await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: '{"id":1}\n' }));

    const received: string[] = [];
    for (let round = 0; round < 5 && received.length < KEYS.length; round++) {
      const { Messages = [] } = (await sqs('ReceiveMessage', { QueueUrl, MaxNumberOfMessages: 10 })) as {
        Messages?: { Body: string }[];
      };
      received.push(...Messages.map((m) => m.Body));
    }
    expect(received).toHaveLength(KEYS.length);

    const deps = {
      blobs: new S3BlobStore(s3, bucket),
      bucket,
      work: defineWork({ name: 'w' }),
    } as unknown as StepDeps<unknown>;
    const found: string[] = [];
    for (const body of received) {
      const event = JSON.parse(body) as { detail: { object: { key: string } } };
      // The rule's input transformer: {"dataset": <detail.object.key>}, then Register reads it.
      const input = { dataset: event.detail.object.key };
      const { key } = datasetLocation(input.dataset, bucket);
      for await (const object of datasetObjects(deps, key)) found.push(object.key);
    }
    expect(found.sort()).toEqual([...KEYS].sort());
  });
});
