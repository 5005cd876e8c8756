import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { WebhookRequest, WebhookResponse } from '../functions/steps/webhook';
import { freePort } from './stand-ins';

/** A delivery the receiver answered, for tests and progress. */
export interface ReceivedWebhook {
  readonly statusCode: number;
  readonly outcome: string;
}

/**
 * The local stand-in of the webhook Function URL: an HTTP server on loopback that hands each POST to the
 * same receiving code as the Lambda (set as `handle` by the local runner while a run goes on). With no
 * run listening it answers 503, which the sender retries, as OpenAI does.
 */
export interface WebhookReceiver {
  readonly url: string;
  /** A signing secret made for this environment (`whsec_` and 32 random bytes). */
  readonly secret: string;
  readonly received: ReceivedWebhook[];
  handle: ((request: WebhookRequest) => Promise<WebhookResponse>) | null;
  stop(): Promise<void>;
}

const MAX_BODY_BYTES = 64 * 1024;

export async function startWebhookReceiver(): Promise<WebhookReceiver> {
  const port = await freePort();
  const receiver: WebhookReceiver = {
    url: `http://127.0.0.1:${port}/webhook`,
    secret: `whsec_${randomBytes(32).toString('base64')}`,
    received: [],
    handle: null,
    stop: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const reply = (response: import('node:http').ServerResponse, answer: WebhookResponse) => {
    response.writeHead(answer.statusCode, { 'content-type': 'application/json' }).end(answer.body);
  };
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    request.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    request.on('end', () => {
      const handle = receiver.handle;
      if (request.method !== 'POST') return reply(response, { statusCode: 405, body: '{}' });
      if (bytes > MAX_BODY_BYTES) return reply(response, { statusCode: 413, body: '{}' });
      if (!handle) return reply(response, { statusCode: 503, body: '{"outcome":"no run listening"}' });
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(request.headers))
        if (typeof value === 'string') headers[name] = value;
      handle({ body: Buffer.concat(chunks).toString('utf8'), headers })
        .then((answer) => {
          receiver.received.push({
            statusCode: answer.statusCode,
            outcome: (JSON.parse(answer.body) as { outcome?: string }).outcome ?? '',
          });
          reply(response, answer);
        })
        .catch(() => reply(response, { statusCode: 500, body: '{}' }));
    });
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
  return receiver;
}
