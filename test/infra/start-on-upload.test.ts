import {
  CreateBucketCommand,
  PutBucketNotificationConfigurationCommand,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { autoStartRuleToQueue, type Moto, motoClientConfig, motoSqs, startMoto } from '../support/moto';

describe("autoStart's rule, S3 through EventBridge (moto_server: S3, EventBridge, SQS)", () => {
  const bucket = 'autostart-rule';
  let moto: Moto;
  let s3: S3Client;
  let queueUrl: string;
  const put = (key: string, body: string) =>
    s3.send(
      new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentLength: Buffer.byteLength(body) }),
    );
  /** The keys of the runs the rule started so far (the messages in its queue). */
  const started = async (): Promise<string[]> => {
    const keys: string[] = [];
    for (;;) {
      const { Messages = [] } = (await motoSqs(moto.endpoint, 'ReceiveMessage', {
        QueueUrl: queueUrl,
        MaxNumberOfMessages: 10,
      })) as { Messages?: { Body: string }[] };
      if (Messages.length === 0) return keys;
      for (const { Body } of Messages)
        keys.push((JSON.parse(Body) as { detail: { object: { key: string } } }).detail.object.key);
    }
  };

  beforeAll(async () => {
    moto = await startMoto();
    s3 = new S3Client({ ...motoClientConfig(moto.endpoint), forcePathStyle: true });
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await s3.send(
      new PutBucketNotificationConfigurationCommand({
        Bucket: bucket,
        NotificationConfiguration: { EventBridgeConfiguration: {} },
      }),
    );
    queueUrl = await autoStartRuleToQueue(moto.endpoint, bucket, 'w', 'started');
  }, 30_000);
  afterAll(() => moto?.stop());

  it('starts a run for each object of data under inputs/<work>/, none for a folder or an empty object', async () => {
    await put('inputs/w/sub/', ''); // what the S3 console's "Create folder" writes
    await put('inputs/w/empty.jsonl', '');
    await put('inputs/w/sub/a.jsonl', '{"id":1}\n');
    await put('inputs/other/b.jsonl', '{"id":1}\n'); // another work's
    await put('runs/r/outputs/part-00000.jsonl', '{"id":1}\n'); // what a run writes
    await put('inputs/w/c.jsonl', '{"id":1}\n');
    // moto delivers each event as the object is put: all of them are in the queue.
    expect((await started()).sort()).toEqual(['inputs/w/c.jsonl', 'inputs/w/sub/a.jsonl']);
  });
});
