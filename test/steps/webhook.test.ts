import {
  CreateSecretCommand,
  DeleteSecretCommand,
  PutSecretValueCommand,
  SecretsManagerClient,
} from '@aws-sdk/client-secrets-manager';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachedWebhookSecret, WEBHOOK_SECRET_PLACEHOLDER } from '../../functions/adapters/secret';
import { openaiWebhookVerifier } from '../../functions/adapters/webhook-verifier';
import type { RunStore } from '../../functions/core/ports';
import { receiverSecret, receiveWebhook, type WebhookDeps } from '../../functions/steps/webhook';
import { signWebhook } from '../../local/emulator/webhooks';
import { type Moto, motoClientConfig, startMoto } from '../support/moto';

describe('the webhook receiver and its signing secret (Secrets Manager from moto_server)', () => {
  let moto: Moto;
  let secrets: SecretsManagerClient;
  const secret = `whsec_${Buffer.from('a test signing secret of 32 bytes!').toString('base64')}`;
  // No run is reached on these paths: a store that is touched fails the test.
  const runs = new Proxy({} as RunStore, {
    get: (_, name) => () => Promise.reject(new Error(`the run store was called (${String(name)})`)),
  });

  beforeAll(async () => {
    moto = await startMoto();
    secrets = new SecretsManagerClient(motoClientConfig(moto.endpoint));
    await secrets.send(new CreateSecretCommand({ Name: 'hooks/readable', SecretString: secret }));
    await secrets.send(
      new CreateSecretCommand({ Name: 'hooks/placeholder', SecretString: WEBHOOK_SECRET_PLACEHOLDER }),
    );
    await secrets.send(new CreateSecretCommand({ Name: 'hooks/deleted', SecretString: secret }));
    await secrets.send(
      new DeleteSecretCommand({ SecretId: 'hooks/deleted', ForceDeleteWithoutRecovery: true }),
    );
    await secrets.send(new PutSecretValueCommand({ SecretId: 'hooks/readable', SecretString: secret }));
  }, 30_000);
  afterAll(() => moto?.stop());

  /** The receiver as the Lambda builds it (functions/lambda.ts), reading `secretId`, with its log kept. */
  function receiver(secretId: string) {
    const logged: { message: string; fields: Record<string, unknown> }[] = [];
    const deps: WebhookDeps = {
      runs,
      verify: openaiWebhookVerifier(receiverSecret(cachedWebhookSecret(secrets, secretId, 0))),
      control: { start: async () => {}, stop: async () => {} },
      now: Date.now,
      log: (message, fields) => logged.push({ message, fields: fields ?? {} }),
    };
    return { deps, logged };
  }
  const body = JSON.stringify({
    id: 'evt_1',
    object: 'event',
    type: 'response.completed',
    created_at: 1,
    data: { id: 'resp_1' },
  });
  const signed = () => signWebhook(secret, 'evt_1', Math.floor(Date.now() / 1000), body);

  it.each([
    ['a secret that does not exist (or that IAM denies)', 'hooks/missing', /ResourceNotFound|can't find/i],
    ['a secret that was deleted', 'hooks/deleted', /ResourceNotFound|can't find|deleted/i],
    [
      'the placeholder still in the secret',
      'hooks/placeholder',
      /holds no OpenAI webhook signing secret yet/,
    ],
  ])(
    'answers 500 (so OpenAI retries) for %s, and logs the real cause, never the secret',
    async (_, id, cause) => {
      const { deps, logged } = receiver(id);
      const response = await receiveWebhook(deps, { body, headers: signed() });
      expect(response.statusCode).toBe(500);
      expect(JSON.parse(response.body)).toEqual({ outcome: 'signing secret unreadable' });
      expect(logged).toHaveLength(1);
      expect(logged[0]?.message).toMatch(/signing secret cannot be read/);
      expect(String(logged[0]?.fields.reason)).toMatch(cause);
      expect(JSON.stringify(logged)).not.toContain(secret.slice('whsec_'.length));
    },
  );

  it('still answers 401 to a bad, a missing and a stale signature when the secret is readable', async () => {
    const { deps, logged } = receiver('hooks/readable');
    const bad = { ...signed(), 'webhook-signature': 'v1,AAAA' };
    expect((await receiveWebhook(deps, { body, headers: bad })).statusCode).toBe(401);
    expect((await receiveWebhook(deps, { body, headers: {} })).statusCode).toBe(401);
    const stale = signWebhook(secret, 'evt_1', Math.floor(Date.now() / 1000) - 600, body);
    expect((await receiveWebhook(deps, { body, headers: stale })).statusCode).toBe(401);
    expect(logged.map((l) => l.message)).toEqual(['webhook refused', 'webhook refused', 'webhook refused']);
    expect(JSON.stringify(logged)).not.toContain(secret.slice('whsec_'.length));
  });

  it('accepts a well signed delivery with the readable secret', async () => {
    const { deps } = receiver('hooks/readable');
    const response = await receiveWebhook(deps, { body, headers: signed() });
    expect(response).toEqual({ statusCode: 200, body: JSON.stringify({ outcome: 'ignored' }) });
  });
});
