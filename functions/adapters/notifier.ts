import { type EventBridgeClient, PutEventsCommand } from '@aws-sdk/client-eventbridge';
import { PublishCommand, type SNSClient } from '@aws-sdk/client-sns';
import type { Notifier } from '../steps/deps';

/** Announces a run's end on an EventBridge bus (source `openai-batch`) and, when set, an SNS topic. */
export class AwsNotifier implements Notifier {
  constructor(
    private readonly events: EventBridgeClient,
    private readonly busName: string,
    private readonly sns: SNSClient | null,
    private readonly topicArn: string | null,
  ) {}

  async notify(detailType: 'Run Completed' | 'Run Failed', detail: Record<string, unknown>): Promise<void> {
    await this.events.send(
      new PutEventsCommand({
        Entries: [
          {
            Source: 'openai-batch',
            DetailType: detailType,
            Detail: JSON.stringify(detail),
            EventBusName: this.busName,
          },
        ],
      }),
    );
    if (this.sns && this.topicArn) {
      await this.sns.send(
        new PublishCommand({
          TopicArn: this.topicArn,
          Subject: `openai-batch: ${detailType}`.slice(0, 100),
          Message: JSON.stringify(detail, null, 2),
        }),
      );
    }
  }
}
