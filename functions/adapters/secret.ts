import { GetSecretValueCommand, type SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { ConfigError } from '../core/errors';

/** What a secret the stack creates holds until the user puts the OpenAI key in it. */
export const API_KEY_PLACEHOLDER = 'put-your-openai-api-key-here';

/** What the webhook signing secret holds until the user puts OpenAI's `whsec_...` secret in it. */
export const WEBHOOK_SECRET_PLACEHOLDER = 'put-your-openai-webhook-signing-secret-here';

interface SecretKind {
  /** The JSON field that may hold the value (`{"apiKey": "..."}`). */
  readonly field: string;
  readonly placeholder: string;
  /** What is missing, in the error: "no OpenAI API key". */
  readonly missing: string;
  readonly example: string;
}

/**
 * A secret's value from Secrets Manager, fetched on first use and cached for `ttlMs` (so a rotated value
 * is picked up). The secret holds the value itself, or JSON with `kind.field`. The value is never logged,
 * put in the environment, or returned in an error.
 */
function cachedSecret(
  secrets: SecretsManagerClient,
  secretId: string,
  kind: SecretKind,
  ttlMs: number,
): () => Promise<string> {
  let cached: { value: string; at: number } | null = null;
  return async () => {
    if (cached && Date.now() - cached.at < ttlMs) return cached.value;
    const { SecretString } = await secrets.send(new GetSecretValueCommand({ SecretId: secretId }));
    let value = SecretString?.trim() ?? '';
    if (value.startsWith('{')) {
      try {
        const parsed = JSON.parse(value) as Record<string, unknown>;
        const field = parsed[kind.field];
        value = typeof field === 'string' ? field : '';
      } catch {
        value = '';
      }
    }
    if (!value || value === kind.placeholder) {
      throw new ConfigError(
        `The secret ${secretId} holds ${kind.missing} yet. Put it in (the value itself, or {"${kind.field}": "..."}), for example: aws secretsmanager put-secret-value --secret-id ${secretId} --secret-string "${kind.example}"`,
      );
    }
    cached = { value, at: Date.now() };
    return value;
  };
}

/** The OpenAI API key (see {@link cachedSecret}). */
export function cachedApiKey(
  secrets: SecretsManagerClient,
  secretId: string,
  ttlMs = 5 * 60_000,
): () => Promise<string> {
  return cachedSecret(
    secrets,
    secretId,
    { field: 'apiKey', placeholder: API_KEY_PLACEHOLDER, missing: 'no OpenAI API key', example: 'sk-...' },
    ttlMs,
  );
}

/** OpenAI's webhook signing secret, shown once when the endpoint is added in the dashboard. */
export function cachedWebhookSecret(
  secrets: SecretsManagerClient,
  secretId: string,
  ttlMs = 5 * 60_000,
): () => Promise<string> {
  return cachedSecret(
    secrets,
    secretId,
    {
      field: 'webhookSecret',
      placeholder: WEBHOOK_SECRET_PLACEHOLDER,
      missing: 'no OpenAI webhook signing secret',
      example: 'whsec_...',
    },
    ttlMs,
  );
}
