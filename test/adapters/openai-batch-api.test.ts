import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { batchApiWithKey, OpenAIBatchApi } from '../../functions/adapters/openai-batch-api';
import { ConfigError, OpenAIUnavailableError } from '../../functions/core/errors';
import { type Emulator, startEmulator } from '../../local/emulator/server';
import { clientFor } from '../support/emulator';

/** The adapter's errors: OpenAI's outages and refusals become the run's condition, a request's stay its own. */

let emulator: Emulator;

beforeAll(async () => {
  emulator = await startEmulator({ tickMs: 0 });
});

afterAll(async () => {
  await emulator?.stop();
});

describe('OpenAIBatchApi errors', () => {
  it('turns a 503 into OpenAIUnavailableError after the client has retried', async () => {
    const down = await startEmulator({ tickMs: 0 });
    try {
      down.faults.outage('unavailable', 60_000);
      const failed = new OpenAIBatchApi(clientFor(down, { maxRetries: 0 })).getBatch('batch_x');
      await expect(failed).rejects.toBeInstanceOf(OpenAIUnavailableError);
      await expect(failed).rejects.toMatchObject({ reason: 'openai_unavailable', status: 503 });
    } finally {
      await down.stop();
    }
  });

  it('turns a refused key into key_refused, even while streaming a file', async () => {
    const refused = await startEmulator({ tickMs: 0, apiKey: 'sk-right' });
    try {
      const wrong = new OpenAIBatchApi(clientFor(refused, { apiKey: 'sk-wrong', maxRetries: 0 }));
      await expect(wrong.recentBatches(0)).rejects.toMatchObject({ reason: 'key_refused', status: 401 });
      const reading = (async () => {
        for await (const _ of wrong.fileContent('file-x')) {
          // nothing: the first read is refused
        }
      })();
      await expect(reading).rejects.toMatchObject({ name: 'OpenAIUnavailableError', reason: 'key_refused' });
    } finally {
      await refused.stop();
    }
  });

  it("waits for the right key when OpenAI does not know the run's own batch (a key of another project)", async () => {
    const fresh = await startEmulator({ tickMs: 0 });
    try {
      const api = new OpenAIBatchApi(clientFor(fresh, { maxRetries: 0 }));
      await expect(api.getBatch('batch_missing')).rejects.toMatchObject({
        name: 'OpenAIUnavailableError',
        reason: 'key_refused',
        status: 404,
        message: expect.stringMatching(/does not know batch batch_missing for this key/),
      });
      await expect(api.cancelBatch('batch_missing')).rejects.toMatchObject({ reason: 'key_refused' });
    } finally {
      await fresh.stop();
    }
  });

  it('takes a 200 that is not an OpenAI answer (a proxy page, cut or empty JSON, another JSON) for an outage, on every call', async () => {
    // A proxy or a captive portal: a server of its own that answers every request 200 with one body. The
    // emulator answers as OpenAI does, so it cannot stand in for one.
    const bodies: Record<string, [string, string]> = {
      page: ['text/html', '<html><body>Sign in to the network</body></html>'],
      empty: ['application/json', ''],
      cut: ['application/json', '{"id":"batch_1","status":"in_pro'],
      other: ['application/json', '{"ok":true,"data":"none"}'],
      // A batch in all but its types: counts as text, a file id as a number.
      odd: [
        'application/json',
        '{"id":"batch_1","object":"batch","status":"completed","created_at":1,"request_counts":{"total":"3","completed":"3","failed":0},"output_file_id":42}',
      ],
      null: ['application/json', 'null'],
    };
    const outcomes: string[] = [];
    for (const [name, [type, body]] of Object.entries(bodies)) {
      const server = createServer((request, response) => {
        request.resume();
        request.on('end', () => response.writeHead(200, { 'content-type': type }).end(body));
      });
      await new Promise<void>((listening) => server.listen(0, '127.0.0.1', () => listening()));
      const { port } = server.address() as AddressInfo;
      const api = new OpenAIBatchApi(
        new OpenAI({ apiKey: 'sk-test', baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0 }),
      );
      const calls: Record<string, () => Promise<unknown>> = {
        getBatch: () => api.getBatch('batch_1'),
        createBatch: () =>
          api.createBatch({ fileId: 'file_1', endpoint: '/v1/chat/completions', metadata: {} }),
        cancelBatch: () => api.cancelBatch('batch_1'),
        recentBatches: () => api.recentBatches(0),
        filesNamed: () => api.filesNamed('run-'),
        uploadFile: () =>
          api.uploadFile(
            'part.jsonl',
            (async function* () {
              yield Buffer.from('{}\n');
            })(),
          ),
      };
      try {
        for (const [call, run] of Object.entries(calls)) {
          const caught = await run().then(
            () => null,
            (error: unknown) => error,
          );
          outcomes.push(
            `${name} ${call}: ${caught instanceof OpenAIUnavailableError ? caught.reason : String(caught)}`,
          );
        }
      } finally {
        server.close();
      }
    }
    expect(outcomes).toEqual(
      Object.keys(bodies).flatMap((name) =>
        ['getBatch', 'createBatch', 'cancelBatch', 'recentBatches', 'filesNamed', 'uploadFile'].map(
          (call) => `${name} ${call}: openai_unavailable`,
        ),
      ),
    );
  });

  it('throws a failure to read the file it uploads as itself, not as an outage to wait on for ever', async () => {
    const gone = Object.assign(new Error('The specified key does not exist.'), { name: 'NoSuchKey' });
    const api = new OpenAIBatchApi(clientFor(emulator, { maxRetries: 0 }));
    const upload = api.uploadFile(
      'run.part-00000.jsonl',
      (async function* () {
        yield Buffer.from('{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{}}\n');
        throw gone;
      })(),
    );
    await expect(upload).rejects.toBe(gone);
  });

  it("leaves a request's own refusal (a bad create) as the client's error", async () => {
    const fresh = await startEmulator({ tickMs: 0 });
    try {
      const api = new OpenAIBatchApi(clientFor(fresh, { maxRetries: 0 }));
      const refused = api.createBatch({ fileId: 'file-x', endpoint: '/v1/nowhere', metadata: {} });
      await expect(refused).rejects.not.toBeInstanceOf(OpenAIUnavailableError);
      await expect(refused).rejects.toMatchObject({ status: 400 });
    } finally {
      await fresh.stop();
    }
  });
});

describe('batchApiWithKey', () => {
  it('makes a secret without a key a refused key, with the secret message', async () => {
    const api = batchApiWithKey(async () => {
      throw new ConfigError('The secret s holds no OpenAI API key yet. Put it in ...');
    }, emulator.url);
    await expect(api()).rejects.toMatchObject({
      name: 'OpenAIUnavailableError',
      reason: 'key_refused',
      message: 'The secret s holds no OpenAI API key yet. Put it in ...',
    });
  });

  it('reads the key at each call, so that a key put in later is used', async () => {
    let key = '';
    const api = batchApiWithKey(async () => {
      if (!key) throw new ConfigError('no key yet');
      return key;
    }, emulator.url);
    await expect(api()).rejects.toBeInstanceOf(OpenAIUnavailableError);
    key = 'sk-now';
    await expect((await api()).recentBatches(0)).resolves.toBeInstanceOf(Array);
  });

  it('lets other failures to read the secret through', async () => {
    const api = batchApiWithKey(async () => {
      throw new Error('AccessDeniedException');
    });
    await expect(api()).rejects.toThrow('AccessDeniedException');
  });
});
