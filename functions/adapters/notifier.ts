import { type EventBridgeClient, PutEventsCommand } from '@aws-sdk/client-eventbridge';
import { PublishCommand, type SNSClient } from '@aws-sdk/client-sns';
import type { Notifier } from '../steps/deps';

/**
 * EventBridge refused an announcement (PutEvents answers 200 with a failed entry: throttling, an
 * internal failure, a bus that denies it). Thrown so that the step's Retry sends it again.
 */
export class NotificationError extends Error {
  override readonly name = 'NotificationError';
  constructor(
    message: string,
    /** EventBridge's code for the failed entry (`ThrottlingException`, `InternalFailure`, ...). */
    readonly code?: string,
  ) {
    super(message);
  }
}

/** Announces a run's end on an EventBridge bus (source `openai-batch`) and, when set, an SNS topic. */
export class AwsNotifier implements Notifier {
  constructor(
    private readonly events: EventBridgeClient,
    private readonly busName: string,
    private readonly sns: SNSClient | null,
    private readonly topicArn: string | null,
  ) {}

  async notify(detailType: 'Run Completed' | 'Run Failed', detail: Record<string, unknown>): Promise<void> {
    const sent = await this.events.send(
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
    // PutEvents reports a refused entry in its answer, not as an error: look, or the event is lost.
    if ((sent.FailedEntryCount ?? 0) > 0) {
      const failed = sent.Entries?.find((entry) => entry.ErrorCode || entry.ErrorMessage);
      throw new NotificationError(
        `EventBridge refused the "${detailType}" event on bus ${this.busName}: ${failed?.ErrorCode ?? 'no code'}: ${failed?.ErrorMessage ?? 'no message'}`,
        failed?.ErrorCode,
      );
    }
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
