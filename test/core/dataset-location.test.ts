import { type ChildProcess, spawn } from 'node:child_process';
import { EventBridgeClient, PutRuleCommand, PutTargetsCommand } from '@aws-sdk/client-eventbridge';
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
import { freePort } from '../../local/stand-ins';

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

/** moto_server (the machine's Python), started once for this file. */
async function startMoto(): Promise<{ endpoint: string; stop: () => void }> {
  const port = await freePort();
  const child: ChildProcess = spawn('moto_server', ['-p', String(port)], { stdio: 'ignore' });
  const endpoint = `http://127.0.0.1:${port}`;
  for (let attempt = 0; attempt < 200; attempt++) {
    if (child.exitCode !== null) break;
    if (
      await fetch(`${endpoint}/moto-api/`).then(
        (r) => r.ok,
        () => false,
      )
    )
      return { endpoint, stop: () => child.kill() };
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  child.kill();
  throw new Error('moto_server did not start: install it with `pip install "moto[server]"`');
}

describe("autoStart's key, from S3 through EventBridge (moto_server: S3, EventBridge, SQS)", () => {
  const bucket = 'autostart-keys';
  let moto: { endpoint: string; stop: () => void };
  let s3: S3Client;
  /** SQS over its JSON protocol (no SQS client is installed): the rule's target, to see the events. */
  const sqs = async (action: string, body: Record<string, unknown>) => {
    const response = await fetch(moto.endpoint, {
      method: 'POST',
      headers: {
        'x-amz-target': `AmazonSQS.${action}`,
        'content-type': 'application/x-amz-json-1.0',
        // moto routes a request by the service its credential scope names (it checks no signature).
        authorization:
          'AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0',
      },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(`SQS ${action}: ${response.status} ${await response.text()}`);
    return (await response.json()) as Record<string, unknown>;
  };

  beforeAll(async () => {
    moto = await startMoto();
    const aws = {
      endpoint: moto.endpoint,
      region: 'us-east-1',
      credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' },
    };
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
    const { QueueUrl } = (await sqs('CreateQueue', { QueueName: 'created' })) as { QueueUrl: string };
    const events = new EventBridgeClient({
      endpoint: moto.endpoint,
      region: 'us-east-1',
      credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' },
    });
    // The stack's rule matches Object Created under inputs/<work>/ (infra/openai-batch-work.ts).
    await events.send(
      new PutRuleCommand({
        Name: 'auto-start',
        EventPattern: JSON.stringify({
          source: ['aws.s3'],
          'detail-type': ['Object Created'],
          detail: { bucket: { name: [bucket] }, object: { key: [{ prefix: 'inputs/w/' }] } },
        }),
      }),
    );
    await events.send(
      new PutTargetsCommand({
        Rule: 'auto-start',
        Targets: [{ Id: 'queue', Arn: `arn:aws:sqs:us-east-1:123456789012:created` }],
      }),
    );
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
      found.push(...(await datasetObjects(deps, key)).map((o) => o.key));
    }
    expect(found.sort()).toEqual([...KEYS].sort());
  });
});
