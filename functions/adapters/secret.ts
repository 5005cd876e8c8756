import { GetSecretValueCommand, type SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { ConfigError } from '../core/errors';

/** What a secret the stack creates holds until the user puts the OpenAI key in it. */
export const API_KEY_PLACEHOLDER = 'put-your-openai-api-key-here';

/**
 * The OpenAI API key from Secrets Manager, fetched on first use and cached for `ttlMs` (so a rotated key
 * is picked up). The secret holds the key itself, or JSON with an `apiKey` field. The key is never
 * logged, put in the environment, or returned in an error.
 */
export function cachedApiKey(
  secrets: SecretsManagerClient,
  secretId: string,
  ttlMs = 5 * 60_000,
): () => Promise<string> {
  let cached: { key: string; at: number } | null = null;
  return async () => {
    if (cached && Date.now() - cached.at < ttlMs) return cached.key;
    const { SecretString } = await secrets.send(new GetSecretValueCommand({ SecretId: secretId }));
    let key = SecretString?.trim() ?? '';
    if (key.startsWith('{')) {
      try {
        const parsed = JSON.parse(key) as { apiKey?: unknown };
        key = typeof parsed.apiKey === 'string' ? parsed.apiKey : '';
      } catch {
        key = '';
      }
    }
    if (!key || key === API_KEY_PLACEHOLDER) {
      throw new ConfigError(
        `The secret ${secretId} holds no OpenAI API key yet. Put the key in it (the key itself, or {"apiKey": "sk-..."}), for example: aws secretsmanager put-secret-value --secret-id ${secretId} --secret-string "sk-..."`,
      );
    }
    cached = { key, at: Date.now() };
    return key;
  };
}
