import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Emulator, startEmulator } from '../../local/emulator/server';
import { localCommand } from '../../local/local-command';

let dir: string;
let emulator: Emulator;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-local-command-'));
  emulator = await startEmulator({ validationMs: 50, requestsPerSecond: 500, finalizingMs: 20, tickMs: 10 });
});

afterAll(async () => {
  await emulator?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * OpenAI as it answers a key that was revoked, until `accept()`: 401 to everything, then the emulator
 * behind it answers (the key was replaced).
 */
async function refusingOpenAI(): Promise<{ url: string; accept: () => void; stop: () => Promise<void> }> {
  const upstream = new URL(emulator.url);
  let refusing = true;
  const server = createServer((req, res) => {
    if (refusing) {
      req.resume();
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          error: {
            message: 'Incorrect API key provided: sk-wro*****ong.',
            type: 'invalid_request_error',
            param: null,
            code: 'invalid_api_key',
          },
        }),
      );
      return;
    }
    const forwarded = request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: upstream.host },
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    req.pipe(forwarded);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}${upstream.pathname}`,
    accept: () => {
      refusing = false;
    },
    stop: () => new Promise((r) => server.close(() => r())),
  };
}

describe('openai-batch local shows a run that waits for OpenAI', () => {
  it('says the key was refused, since when, and goes on once the key works', async () => {
    const openai = await refusingOpenAI();
    try {
      const dataset = join(dir, 'questions.jsonl');
      writeFileSync(
        dataset,
        Array.from({ length: 5 }, (_, i) => JSON.stringify({ id: `q${i}`, content: `question ${i}` })).join(
          '\n',
        ),
      );
      const printed: string[] = [];
      const result = await localCommand(
        new URL('../fixtures/works/chat.ts', import.meta.url).pathname,
        dataset,
        {
          out: join(dir, 'out'),
          openaiBaseUrl: openai.url,
          runId: 'refused-key',
          env: { OPENAI_API_KEY: 'sk-wrong' },
          print: (line) => {
            printed.push(line);
            // The person reads the line and puts a working key in place.
            if (line.includes('waiting: OpenAI refused the API key')) openai.accept();
          },
        },
      );
      const waiting = printed.filter((l) => l.includes('waiting: OpenAI'));
      expect(waiting).toHaveLength(1);
      expect(waiting[0]).toMatch(
        /^\[[\d.]+s\] batches: 0\/1 done, 0 on OpenAI, \d waiting; waiting: OpenAI refused the API key since [\d.]+s into the run \((401 )?Incorrect API key provided: sk-wro\*+ong\.\); put a working key in the secret; the run goes on by itself$/,
      );
      expect(result.exitCode).toBe(0);
      expect(result.summary?.counts).toMatchObject({ records: 5, outputs: 5, errors: 0 });
    } finally {
      await openai.stop();
    }
  }, 60_000);
});
