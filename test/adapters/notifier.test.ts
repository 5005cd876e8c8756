import { type ChildProcess, spawn } from 'node:child_process';
import {
  CreateEventBusCommand,
  EventBridgeClient,
  type PutEventsCommandInput,
} from '@aws-sdk/client-eventbridge';
import { CreateTopicCommand, SNSClient } from '@aws-sdk/client-sns';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AwsNotifier, NotificationError } from '../../functions/adapters/notifier';
import { freePort } from '../../local/stand-ins';

/** EventBridge and SNS from moto_server (the machine's Python), started once for this file. */
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

describe('AwsNotifier (EventBridge and SNS from moto_server)', () => {
  let moto: { endpoint: string; stop: () => void };
  let topicArn: string;
  const clientConfig = () => ({
    endpoint: moto.endpoint,
    region: 'us-east-1',
    credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' },
  });

  beforeAll(async () => {
    moto = await startMoto();
    await new EventBridgeClient(clientConfig()).send(new CreateEventBusCommand({ Name: 'runs' }));
    topicArn =
      (await new SNSClient(clientConfig()).send(new CreateTopicCommand({ Name: 'runs' }))).TopicArn ?? '';
  }, 30_000);
  afterAll(() => moto?.stop());

  /** An SNS client that counts its Publish calls (it still sends them to moto). */
  function countingSns() {
    const sns = new SNSClient(clientConfig());
    const published = { count: 0 };
    sns.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'PublishCommand') published.count++;
        return next(args);
      },
      { step: 'initialize' },
    );
    return { sns, published };
  }

  it('announces on the bus and the topic', async () => {
    const { sns, published } = countingSns();
    const notifier = new AwsNotifier(new EventBridgeClient(clientConfig()), 'runs', sns, topicArn);
    await notifier.notify('Run Completed', { runId: 'r1' });
    expect(published.count).toBe(1);
  });

  it('throws a NotificationError naming the entry error when PutEvents refuses the entry, before SNS', async () => {
    // moto fails an entry only for input the notifier never sends (a malformed Detail), and a real
    // refusal (ThrottlingException, InternalFailure) cannot be provoked: this middleware breaks the
    // Detail on its way out, so the partial failure (200, FailedEntryCount 1) is moto's own answer.
    const events = new EventBridgeClient(clientConfig());
    events.middlewareStack.add(
      (next) => async (args) => {
        const input = args.input as PutEventsCommandInput;
        for (const entry of input.Entries ?? []) entry.Detail = '{not json';
        return next(args);
      },
      { step: 'initialize' },
    );
    const { sns, published } = countingSns();
    const notifier = new AwsNotifier(events, 'runs', sns, topicArn);
    const attempt = notifier.notify('Run Failed', { runId: 'r2' });
    await expect(attempt).rejects.toBeInstanceOf(NotificationError);
    await expect(attempt).rejects.toMatchObject({
      name: 'NotificationError',
      code: 'MalformedDetail',
      message: expect.stringMatching(
        /refused the "Run Failed" event on bus runs: MalformedDetail: Detail is malformed/,
      ),
    });
    expect(published.count).toBe(0); // the retry announces on both; nothing was announced twice
  });
});
