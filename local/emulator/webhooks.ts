import { createHmac } from 'node:crypto';
import type { BatchObject } from './batches';
import type { Ids } from './random';

/** The webhook event types the Batch API sends. */
const EVENT_TYPES = {
  completed: 'batch.completed',
  failed: 'batch.failed',
  expired: 'batch.expired',
  cancelled: 'batch.cancelled',
} as const;

/** A delivery attempt's outcome, kept for tests and the CLI. */
export interface Delivery {
  eventId: string;
  type: string;
  batchId: string;
  attempts: number;
  /** The last HTTP status, or 0 when the endpoint could not be reached. */
  status: number;
  delivered: boolean;
}

/** The key a Standard Webhooks secret stands for: `whsec_` + base64, or the text itself. */
export function webhookKey(secret: string): Buffer {
  return secret.startsWith('whsec_')
    ? Buffer.from(secret.slice('whsec_'.length), 'base64')
    : Buffer.from(secret, 'utf8');
}

/** The Standard Webhooks headers for a body, as OpenAI signs its deliveries. */
export function signWebhook(
  secret: string,
  id: string,
  timestampSeconds: number,
  body: string,
): Record<'webhook-id' | 'webhook-timestamp' | 'webhook-signature', string> {
  const signature = createHmac('sha256', webhookKey(secret))
    .update(`${id}.${timestampSeconds}.${body}`)
    .digest('base64');
  return {
    'webhook-id': id,
    'webhook-timestamp': String(timestampSeconds),
    'webhook-signature': `v1,${signature}`,
  };
}

/** Where and how events are delivered. */
export interface WebhookOptions {
  readonly url: string;
  readonly secret: string;
  /** Attempts before giving up on an event. @default 5 */
  readonly attempts?: number;
  /** First retry delay, doubling each time. @default 200 */
  readonly retryMs?: number;
}

/**
 * Posts a signed event when a batch reaches a final status, retrying any non-2xx answer with backoff
 * (OpenAI retries for up to 72 hours; the emulator a few times).
 */
export class WebhookSender {
  readonly deliveries: Delivery[] = [];
  private readonly pending = new Set<Promise<void>>();
  private stopped = false;

  constructor(
    private readonly options: WebhookOptions,
    private readonly ids: Ids,
  ) {}

  /** Sends the event for a batch that just reached a final status. */
  notify(batch: BatchObject, createdAtSeconds: number): void {
    const type = EVENT_TYPES[batch.status as keyof typeof EVENT_TYPES];
    if (!type) return;
    const delivery: Delivery = {
      eventId: this.ids.event(),
      type,
      batchId: batch.id,
      attempts: 0,
      status: 0,
      delivered: false,
    };
    this.deliveries.push(delivery);
    const body = JSON.stringify({
      id: delivery.eventId,
      object: 'event',
      type,
      created_at: createdAtSeconds,
      data: { id: batch.id },
    });
    const sending = this.send(delivery, body).finally(() => this.pending.delete(sending));
    this.pending.add(sending);
  }

  private async send(delivery: Delivery, body: string): Promise<void> {
    const attempts = this.options.attempts ?? 5;
    let delay = this.options.retryMs ?? 200;
    while (!this.stopped && delivery.attempts < attempts) {
      delivery.attempts += 1;
      // Signed with wall-clock time whatever the emulator's clock: receivers check it against theirs.
      const headers = signWebhook(this.options.secret, delivery.eventId, Math.floor(Date.now() / 1000), body);
      try {
        const response = await fetch(this.options.url, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            'user-agent': 'OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)',
            ...headers,
          },
          body,
          signal: AbortSignal.timeout(10_000),
        });
        delivery.status = response.status;
        await response.body?.cancel();
        if (response.ok) {
          delivery.delivered = true;
          return;
        }
      } catch {
        delivery.status = 0;
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay *= 2;
    }
  }

  /** Waits for deliveries under way. */
  async idle(): Promise<void> {
    while (this.pending.size > 0) await Promise.all([...this.pending]);
  }

  /** Stops retrying. */
  stop(): void {
    this.stopped = true;
  }
}
