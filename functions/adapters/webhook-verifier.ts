import OpenAI from 'openai';

/**
 * Verifies a webhook delivery with the official client's helper (Standard Webhooks: HMAC-SHA256 over id,
 * timestamp and body; a timestamp more than `toleranceSeconds` away is refused) and answers its event.
 * The secret is read when a delivery comes, so a rotated one is picked up.
 */
export function openaiWebhookVerifier(
  secret: () => Promise<string>,
  toleranceSeconds = 300,
): (body: string, headers: Record<string, string>) => Promise<unknown> {
  // Verification never calls the API: the client needs no key (this one is not a secret).
  const client = new OpenAI({ apiKey: 'webhook-verification-only' });
  return async (body, headers) => client.webhooks.unwrap(body, headers, await secret(), toleranceSeconds);
}
