import { type ChildProcess, spawn } from 'node:child_process';
import { EventBridgeClient, PutRuleCommand, PutTargetsCommand } from '@aws-sdk/client-eventbridge';
import { startOnUploadDetail } from '../../infra/start-on-upload';
import { freePort } from '../../local/stand-ins';

/** A moto_server (the machine's Python) on a loopback port. */
export interface Moto {
  readonly endpoint: string;
  stop(): void;
}

/**
 * Starts moto_server on a free loopback port and waits (up to 200 tries, 50 ms apart) until its
 * /moto-api/ answers; throws with the install line if it exits or never answers.
 */
export async function startMoto(): Promise<Moto> {
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

/** An AWS SDK client's configuration for moto at `endpoint` (moto takes any credentials). */
export function motoClientConfig(endpoint: string) {
  return {
    endpoint,
    region: 'us-east-1',
    credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' },
  };
}

/**
 * An SQS action over its JSON protocol (no SQS client is installed). moto routes a request by the service
 * its credential scope names (it checks no signature).
 */
export async function motoSqs(
  endpoint: string,
  action: string,
  body: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  const response = await fetch(endpoint, {
    method: 'POST',
    headers: {
      'x-amz-target': `AmazonSQS.${action}`,
      'content-type': 'application/x-amz-json-1.0',
      authorization:
        'AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0',
    },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`SQS ${action}: ${response.status} ${await response.text()}`);
  return (await response.json()) as Record<string, unknown>;
}

/**
 * The stack's autoStart rule (infra/openai-batch-work.ts), with the pattern's detail the stack puts in it
 * (infra/start-on-upload.ts): Object Created of data under `inputs/<work>/` of `bucket`. moto's EventBridge
 * cannot start a Step Functions execution, so its target is a new queue `queueName`: each message in it is
 * a run autoStart would have started. Resolves with its URL.
 */
export async function autoStartRuleToQueue(
  endpoint: string,
  bucket: string,
  work: string,
  queueName: string,
): Promise<string> {
  const { QueueUrl } = (await motoSqs(endpoint, 'CreateQueue', { QueueName: queueName })) as {
    QueueUrl: string;
  };
  const events = new EventBridgeClient(motoClientConfig(endpoint));
  await events.send(
    new PutRuleCommand({
      Name: 'auto-start',
      EventPattern: JSON.stringify({
        source: ['aws.s3'],
        'detail-type': ['Object Created'],
        detail: startOnUploadDetail(bucket, work),
      }),
    }),
  );
  await events.send(
    new PutTargetsCommand({
      Rule: 'auto-start',
      Targets: [{ Id: 'queue', Arn: `arn:aws:sqs:us-east-1:123456789012:${queueName}` }],
    }),
  );
  return QueueUrl;
}
