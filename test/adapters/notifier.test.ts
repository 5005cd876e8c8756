import {
  CreateEventBusCommand,
  EventBridgeClient,
  type PutEventsCommandInput,
} from '@aws-sdk/client-eventbridge';
import { CreateTopicCommand, SNSClient } from '@aws-sdk/client-sns';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AwsNotifier, NotificationError } from '../../functions/adapters/notifier';
import { type Moto, motoClientConfig, startMoto } from '../support/moto';

describe('AwsNotifier (EventBridge and SNS from moto_server)', () => {
  let moto: Moto;
  let topicArn: string;
  const clientConfig = () => motoClientConfig(moto.endpoint);

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
