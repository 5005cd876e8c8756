import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { describe, expect, it } from 'vitest';
import { API_KEY_PLACEHOLDER, cachedApiKey } from '../../functions/adapters/secret';
import { ConfigError } from '../../functions/core/errors';

/** A stand-in for Secrets Manager's GetSecretValue: no local Secrets Manager exists here, so this is a fake. */
function fakeSecrets(values: (string | undefined)[]) {
  let calls = 0;
  const client = {
    send: async () => ({ SecretString: values[Math.min(calls++, values.length - 1)] }),
  } as unknown as SecretsManagerClient;
  return { client, calls: () => calls };
}

describe('cachedApiKey', () => {
  it('reads the key itself or JSON with apiKey, and fetches it once while the cache lasts', async () => {
    const plain = fakeSecrets(['sk-abc']);
    const key = cachedApiKey(plain.client, 'arn:secret');
    expect(await key()).toBe('sk-abc');
    expect(await key()).toBe('sk-abc');
    expect(plain.calls()).toBe(1);
    expect(await cachedApiKey(fakeSecrets(['{"apiKey":"sk-json"}']).client, 's')()).toBe('sk-json');
  });

  it('fetches again once the cache has expired, to pick up a rotated key', async () => {
    const rotating = fakeSecrets(['sk-old', 'sk-new']);
    const key = cachedApiKey(rotating.client, 's', 0);
    expect(await key()).toBe('sk-old');
    expect(await key()).toBe('sk-new');
  });

  it.each([API_KEY_PLACEHOLDER, '', undefined, '{"other":1}'])(
    'refuses %j with a message saying how to set the key, never a key',
    async (value) => {
      const attempt = cachedApiKey(
        fakeSecrets([value]).client,
        'arn:aws:secretsmanager:eu-west-1:1:secret:k',
      )();
      await expect(attempt).rejects.toBeInstanceOf(ConfigError);
      await expect(attempt).rejects.toThrow(
        /holds no OpenAI API key yet.*put-secret-value --secret-id arn:aws:secretsmanager/,
      );
    },
  );
});
