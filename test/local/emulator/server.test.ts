import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI, { type APIError, toFile } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../local/emulator/clock';
import { FAULT_KINDS } from '../../../local/emulator/faults';
import { type Emulator, startEmulator } from '../../../local/emulator/server';
import { chatLine, clientFor, fileLines, uploadLines } from '../../support/emulator';
import { openapiValidator } from '../../support/openapi';

const validate = openapiValidator();

/** A GET straight to the emulator, for the raw JSON the client turns into pages. */
async function rawGet(emulator: Emulator, path: string): Promise<unknown> {
  const response = await fetch(`${emulator.url}${path}`, { headers: { authorization: 'Bearer sk-test' } });
  return response.json();
}

describe('Files API', () => {
  let emulator: Emulator;
  let client: OpenAI;
  beforeAll(async () => {
    emulator = await startEmulator({ tickMs: 0, maxBatchFileBytes: 2000, seed: 7 });
    client = clientFor(emulator, { maxRetries: 0 });
  });
  afterAll(() => emulator.stop());

  it('stores, describes, lists, streams and deletes a file', async () => {
    const file = await client.files.create({
      file: await toFile(Buffer.from('{"a":1}\n'), 'data.jsonl'),
      purpose: 'batch',
      expires_after: { anchor: 'created_at', seconds: 7200 },
    });
    expect(file).toMatchObject({ object: 'file', bytes: 8, filename: 'data.jsonl', purpose: 'batch' });
    expect(file.expires_at).toBe(file.created_at + 7200);
    validate('OpenAIFile', file);
    expect(await client.files.retrieve(file.id)).toEqual(file);
    expect(await (await client.files.content(file.id)).text()).toBe('{"a":1}\n');
    const page = (await rawGet(emulator, '/files?purpose=batch')) as { data: { id: string }[] };
    validate('ListFilesResponse', page);
    expect(page.data.map((f) => f.id)).toContain(file.id);
    const deleted = await client.files.delete(file.id);
    validate('DeleteFileResponse', deleted);
    expect(deleted).toEqual({ id: file.id, object: 'file', deleted: true });
    await expect(client.files.retrieve(file.id)).rejects.toMatchObject({ status: 404 });
  });

  it('pages through files with after and limit, newest first or oldest first', async () => {
    const made: string[] = [];
    for (let i = 0; i < 5; i++)
      made.push(
        (
          await client.files.create({
            file: await toFile(Buffer.from('x'), `f${i}.txt`),
            purpose: 'user_data',
          })
        ).id,
      );
    const seen: string[] = [];
    for await (const file of client.files.list({ purpose: 'user_data', limit: 2 })) seen.push(file.id);
    expect(seen).toEqual([...made].reverse());
    const asc = await client.files.list({ purpose: 'user_data', order: 'asc', limit: 2 });
    expect(asc.data.map((f) => f.id)).toEqual(made.slice(0, 2));
    expect(asc.has_more).toBe(true);
  });

  it.each([
    [
      'a batch file that is not .jsonl',
      'data.csv',
      'batch',
      10,
      'Invalid file format for Batch API. Must be .jsonl',
    ],
    ['a batch file over the size limit', 'big.jsonl', 'batch', 2001, 'File is too large.'],
    ['an unknown purpose', 'x.jsonl', 'nonsense', 10, /^Invalid value: 'nonsense'/],
  ])('refuses %s with 400', async (_, name, purpose, size, message) => {
    const before = emulator.files.files.size;
    const attempt = client.files.create({
      file: await toFile(Buffer.alloc(size, 'a'), name),
      purpose: purpose as 'batch',
    });
    await expect(attempt).rejects.toMatchObject({
      status: 400,
      error: { message: expect.stringMatching(message), type: 'invalid_request_error' },
    });
    expect(emulator.files.files.size).toBe(before);
  });

  it('answers 404 for an unknown file and an unknown route, in the official error shape', async () => {
    const error = await client.files.retrieve('file-nope').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.NotFoundError);
    const raw = await fetch(`${emulator.url}/nothing`, { headers: { authorization: 'Bearer k' } });
    const body = (await raw.json()) as { error: { message: string } };
    expect(raw.status).toBe(404);
    validate('ErrorResponse', body);
    expect(body.error.message).toBe('Invalid URL (GET /v1/nothing)');
  });
});

describe('authentication', () => {
  it('refuses a request without a bearer key with the official 401 body', async () => {
    const emulator = await startEmulator({ tickMs: 0 });
    try {
      const raw = await fetch(`${emulator.url}/batches`);
      const body = (await raw.json()) as { error: unknown };
      expect(raw.status).toBe(401);
      validate('ErrorResponse', body);
      expect(body.error).toMatchObject({
        type: 'invalid_request_error',
        code: null,
        message: expect.stringMatching(/^You didn't provide an API key/),
      });
    } finally {
      await emulator.stop();
    }
  });

  it('refuses a wrong key when one is required, without echoing it whole', async () => {
    const emulator = await startEmulator({ tickMs: 0, apiKey: 'sk-right' });
    try {
      const error = await clientFor(emulator, { apiKey: 'sk-wrong-key-123456', maxRetries: 0 })
        .batches.list()
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(OpenAI.AuthenticationError);
      expect((error as APIError).code).toBe('invalid_api_key');
      expect((error as APIError).message).not.toContain('sk-wrong-key-123456');
      await expect(clientFor(emulator, { apiKey: 'sk-right' }).batches.list()).resolves.toBeDefined();
    } finally {
      await emulator.stop();
    }
  });
});

describe('Batches API', () => {
  let clock: ManualClock;
  let emulator: Emulator;
  let client: OpenAI;
  beforeAll(async () => {
    clock = new ManualClock(Date.UTC(2026, 10, 25));
    emulator = await startEmulator({
      clock,
      tickMs: 0,
      seed: 3,
      validationMs: 1000,
      requestsPerSecond: 10,
      finalizingMs: 500,
    });
    client = clientFor(emulator, { maxRetries: 0 });
  });
  afterAll(() => emulator.stop());

  const create = async (lines: string[], metadata?: Record<string, string>) => {
    const file = await uploadLines(client, lines);
    return client.batches.create({
      input_file_id: file.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
      ...(metadata ? { metadata } : {}),
    });
  };
  const step = async (ms: number) => {
    clock.advance(ms);
    await emulator.settle();
  };

  it('walks validating -> in_progress -> finalizing -> completed, with counts and timestamps', async () => {
    const lines = Array.from({ length: 100 }, (_, i) =>
      chatLine(`r${i}`, i % 10 === 3 ? 'please [[emulator:fail]]' : `q${i}`),
    );
    const created = await create(lines, { run: 'abc', part: '1' });
    validate('Batch', created);
    const start = created.created_at;
    expect(created).toMatchObject({
      status: 'validating',
      expires_at: start + 86400,
      metadata: { run: 'abc', part: '1' },
      request_counts: { total: 0, completed: 0, failed: 0 },
    });
    expect(created.in_progress_at).toBeNull();

    await step(1000);
    let batch = await client.batches.retrieve(created.id);
    expect(batch).toMatchObject({
      status: 'in_progress',
      model: 'gpt-4o-mini',
      in_progress_at: start + 1,
      request_counts: { total: 100, completed: 0, failed: 0 },
    });
    validate('Batch', batch);

    await step(5000); // 50 requests at 10 a second, 5 of them marked to fail
    batch = await client.batches.retrieve(created.id);
    expect(batch.request_counts).toEqual({ total: 100, completed: 45, failed: 5 });

    await step(5000);
    batch = await client.batches.retrieve(created.id);
    expect(batch).toMatchObject({ status: 'finalizing', finalizing_at: start + 11 });
    validate('Batch', batch);

    await step(500);
    batch = await client.batches.retrieve(created.id);
    validate('Batch', batch);
    expect(batch).toMatchObject({
      status: 'completed',
      completed_at: start + 11,
      request_counts: { total: 100, completed: 90, failed: 10 },
    });
    expect(batch.usage?.input_tokens).toBeGreaterThan(0);

    const outputs = await fileLines(client, batch.output_file_id);
    const errors = await fileLines(client, batch.error_file_id);
    expect(outputs).toHaveLength(90);
    expect(errors).toHaveLength(10);
    expect(outputs.map((o) => o.custom_id)).not.toEqual(
      lines.map((_, i) => `r${i}`).filter((_, i) => i % 10 !== 3),
    );
    const first = outputs[0] as {
      id: string;
      custom_id: string;
      response: {
        status_code: number;
        request_id: string;
        body: { object: string; usage: { prompt_tokens: number } };
      };
      error: null;
    };
    expect(first).toMatchObject({
      id: expect.stringMatching(/^batch_req_/),
      response: {
        status_code: 200,
        request_id: expect.stringMatching(/^req_/),
        body: { object: 'chat.completion' },
      },
      error: null,
    });
    expect(errors[0]).toMatchObject({
      response: {
        status_code: 400,
        body: { error: { code: 'emulated_failure', type: 'invalid_request_error' } },
      },
      error: null,
    });
    const usage = outputs.reduce((n, o) => n + (o as typeof first).response.body.usage.prompt_tokens, 0);
    expect(batch.usage?.input_tokens).toBe(usage);
    expect((await client.files.retrieve(batch.output_file_id ?? '')).purpose).toBe('batch_output');
  });

  it('gives prompt tokens that grow with the input', async () => {
    const batch = await create([chatLine('short', 'hi'), chatLine('long', 'word '.repeat(400))]);
    await step(1000);
    await step(1000);
    await step(1000);
    const done = await client.batches.retrieve(batch.id);
    const outputs = await fileLines(client, done.output_file_id);
    const tokens = Object.fromEntries(
      outputs.map((o) => [
        o.custom_id,
        (o as { response: { body: { usage: { prompt_tokens: number } } } }).response.body.usage.prompt_tokens,
      ]),
    );
    expect(tokens.long).toBeGreaterThan((tokens.short ?? 0) * 50);
  });

  it('fails validation with OpenAI codes, params and line numbers', async () => {
    const lines = [
      chatLine('ok-1'),
      'this is not json',
      JSON.stringify({
        method: 'POST',
        url: '/v1/chat/completions',
        body: { model: 'gpt-4o-mini', messages: [] },
      }),
      JSON.stringify({
        custom_id: 'u',
        method: 'POST',
        url: '/v1/embeddings',
        body: { model: 'gpt-4o-mini', input: 'x' },
      }),
      JSON.stringify({
        custom_id: 'nm',
        method: 'POST',
        url: '/v1/chat/completions',
        body: { messages: [] },
      }),
      JSON.stringify({
        custom_id: 'nmsg',
        method: 'POST',
        url: '/v1/chat/completions',
        body: { model: 'gpt-4o-mini' },
      }),
      JSON.stringify({
        custom_id: 's',
        method: 'POST',
        url: '/v1/chat/completions',
        body: { model: 'gpt-4o-mini', messages: [], stream: true },
      }),
      chatLine('ok-1'),
      chatLine('other', 'q', 'gpt-4o'),
    ];
    const batch = await create(lines);
    await step(1000);
    const failed = await client.batches.retrieve(batch.id);
    validate('Batch', failed);
    expect(failed.status).toBe('failed');
    expect(failed.failed_at).not.toBeNull();
    expect(failed.errors?.data?.map((e) => [e.line, e.code, e.param])).toEqual([
      [2, 'invalid_json_line', null],
      [3, 'missing_required_parameter', 'custom_id'],
      [4, 'invalid_url', 'url'],
      [5, 'invalid_request', 'body.model'],
      [6, 'invalid_request', 'body.messages'],
      [7, 'streaming_unsupported', 'body.stream'],
      [8, 'duplicate_custom_id', 'custom_id'],
      [9, 'mismatched_model', 'body.model'],
    ]);
    expect(failed.errors?.data?.[0]?.message).toBe('This line is not parseable as valid JSON.');
    expect(failed.errors?.data?.[1]?.message).toBe("Missing required parameter: 'custom_id'.");
  });

  it.each([
    ['an empty file', [], 'empty_file'],
    ['an unknown model', [chatLine('a', 'q', 'gpt-nonexistent')], 'model_not_found'],
  ])('fails %s', async (_, lines, code) => {
    const strict = await startEmulator({ tickMs: 0, clock, models: ['gpt-4o-mini'], maxRequestsPerBatch: 3 });
    try {
      const c = clientFor(strict, { maxRetries: 0 });
      const file = await c.files.create({
        file: await toFile(Buffer.from(lines.join('\n')), 'in.jsonl'),
        purpose: 'batch',
      });
      const batch = await c.batches.create({
        input_file_id: file.id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      });
      clock.advance(1000);
      await strict.settle();
      expect((await c.batches.retrieve(batch.id)).errors?.data?.[0]?.code).toBe(code);
    } finally {
      await strict.stop();
    }
  });

  it('fails a file with more requests than a batch may hold', async () => {
    const small = await startEmulator({ tickMs: 0, clock, maxRequestsPerBatch: 3 });
    try {
      const c = clientFor(small, { maxRetries: 0 });
      const file = await uploadLines(
        c,
        ['a', 'b', 'c', 'd'].map((id) => chatLine(id)),
      );
      const batch = await c.batches.create({
        input_file_id: file.id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      });
      clock.advance(1000);
      await small.settle();
      const failed = await c.batches.retrieve(batch.id);
      expect(failed.errors?.data).toEqual([
        {
          code: 'too_many_tasks',
          line: null,
          param: null,
          message: 'The batch input file has 4 requests, more than the limit of 3.',
        },
      ]);
    } finally {
      await small.stop();
    }
  });

  it('accepts an unknown or wrong-purpose input file at create, then fails it as OpenAI does', async () => {
    const unknown = await client.batches.create({
      input_file_id: 'file-missing',
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
    });
    const other = await client.files.create({
      file: await toFile(Buffer.from('x'), 'x.txt'),
      purpose: 'user_data',
    });
    const wrong = await client.batches.create({
      input_file_id: other.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
    });
    await step(1000);
    expect((await client.batches.retrieve(unknown.id)).errors?.data?.[0]).toMatchObject({
      code: 'invalid_request',
      param: 'file_id',
      message: expect.stringMatching(/^Cannot find file file-missing/),
    });
    expect((await client.batches.retrieve(wrong.id)).errors?.data?.[0]).toMatchObject({
      code: 'invalid_request',
      param: 'file_id',
    });
  });

  it.each([
    [{ endpoint: '/v1/images' }, 'invalid_value', 'endpoint'],
    [{ completion_window: '48h' }, 'invalid_value', 'completion_window'],
    [{ metadata: { n: 1 } }, 'invalid_type', 'metadata.n'],
    [{ input_file_id: undefined }, 'missing_required_parameter', 'input_file_id'],
    [
      { output_expires_after: { anchor: 'created_at', seconds: 60 } },
      'invalid_value',
      'output_expires_after',
    ],
  ])('refuses create with %j: 400 %s', async (change, code, param) => {
    const body = {
      input_file_id: 'file-x',
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
      ...change,
    };
    const error = await client.batches.create(body as OpenAI.BatchCreateParams).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect(error).toMatchObject({ code, param });
  });

  it('expires with partial results when processing cannot finish in the window', async () => {
    // A clock on a whole second: expires_at is in whole seconds, so the window is exactly 10 s.
    const clock = new ManualClock(Date.UTC(2026, 0, 1));
    const slow = await startEmulator({
      tickMs: 0,
      clock,
      requestsPerSecond: 1,
      completionWindowMs: 10_000,
      validationMs: 1000,
    });
    try {
      const c = clientFor(slow, { maxRetries: 0 });
      const file = await uploadLines(
        c,
        Array.from({ length: 20 }, (_, i) => chatLine(`e${i}`)),
      );
      const batch = await c.batches.create({
        input_file_id: file.id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      });
      clock.advance(1000);
      await slow.settle();
      clock.advance(9000); // 9 of 20 requests done when the 10 s window closes
      await slow.settle();
      const expired = await c.batches.retrieve(batch.id);
      validate('Batch', expired);
      expect(expired).toMatchObject({
        status: 'expired',
        request_counts: { total: 20, completed: 9, failed: 11 },
      });
      expect(expired.expired_at).not.toBeNull();
      expect(await fileLines(c, expired.output_file_id)).toHaveLength(9);
      const errors = await fileLines(c, expired.error_file_id);
      expect(errors).toHaveLength(11);
      expect(errors[0]).toMatchObject({
        response: null,
        error: {
          code: 'batch_expired',
          message: 'This request could not be executed before the completion window expired.',
        },
      });
    } finally {
      await slow.stop();
    }
  });

  it('cancels: cancelling, then cancelled with the finished results kept', async () => {
    const batch = await create(Array.from({ length: 30 }, (_, i) => chatLine(`c${i}`)));
    await step(1000);
    await step(1200); // 12 done
    const cancelling = await client.batches.cancel(batch.id);
    expect(cancelling).toMatchObject({ status: 'cancelling' });
    expect(cancelling.cancelling_at).not.toBeNull();
    expect((await client.batches.cancel(batch.id)).status).toBe('cancelling');
    await step(1000);
    const cancelled = await client.batches.retrieve(batch.id);
    validate('Batch', cancelled);
    expect(cancelled).toMatchObject({
      status: 'cancelled',
      request_counts: { total: 30, completed: 12, failed: 18 },
    });
    expect(await fileLines(client, cancelled.output_file_id)).toHaveLength(12);
    expect((await fileLines(client, cancelled.error_file_id))[0]).toMatchObject({
      error: { code: 'batch_cancelled' },
    });
    expect((await client.batches.cancel(batch.id)).status).toBe('cancelled');
  });

  it('refuses to cancel a finished batch with 409', async () => {
    const batch = await create([chatLine('x')]);
    await step(1000);
    await step(1000);
    await step(1000);
    expect((await client.batches.retrieve(batch.id)).status).toBe('completed');
    const error = await client.batches.cancel(batch.id, { maxRetries: 0 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.ConflictError);
    expect((error as APIError).message).toBe("409 Cannot cancel a batch with status 'completed'.");
  });

  it('lists batches newest first with cursor pagination', async () => {
    validate('ListBatchesResponse', await rawGet(emulator, '/batches?limit=2'));
    const page = await client.batches.list({ limit: 2 });
    expect(page.data).toHaveLength(2);
    expect(page.has_more).toBe(true);
    const all: string[] = [];
    for await (const batch of client.batches.list({ limit: 3 })) all.push(batch.id);
    expect(all.slice(0, 2)).toEqual(page.data.map((b) => b.id));
    expect(new Set(all).size).toBe(emulator.engine.created);
    await expect(client.batches.retrieve('batch_nope')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });
});

describe('other endpoints', () => {
  it.each([
    [
      '/v1/embeddings',
      { input: ['one', 'two'], dimensions: 8 },
      (body: Record<string, unknown>) =>
        expect((body.data as { embedding: number[] }[]).map((d) => d.embedding.length)).toEqual([8, 8]),
    ],
    [
      '/v1/embeddings',
      { input: [101, 2023, 2003, 102], dimensions: 8 },
      // One array of token integers is one input: one vector (not one a token).
      (body: Record<string, unknown>) =>
        expect((body.data as { embedding: number[] }[]).map((d) => d.embedding.length)).toEqual([8]),
    ],
    [
      '/v1/embeddings',
      { input: 'one', dimensions: 8, encoding_format: 'base64' },
      // base64 of 8 little-endian float32 values: 32 bytes, a unit vector as the floats are.
      (body: Record<string, unknown>) => {
        const [first] = body.data as { embedding: unknown }[];
        expect(typeof first?.embedding).toBe('string');
        const bytes = Buffer.from(String(first?.embedding), 'base64');
        expect(bytes.length).toBe(32);
        const values = Array.from({ length: 8 }, (_, i) => bytes.readFloatLE(i * 4));
        expect(Math.hypot(...values)).toBeCloseTo(1, 4);
      },
    ],
    [
      '/v1/responses',
      { input: 'hello' },
      (body: Record<string, unknown>) =>
        expect(body).toMatchObject({
          object: 'response',
          output: [{ type: 'message', content: [{ type: 'output_text' }] }],
        }),
    ],
    [
      '/v1/completions',
      { prompt: 'once' },
      (body: Record<string, unknown>) => expect(body).toMatchObject({ object: 'text_completion' }),
    ],
    [
      '/v1/completions',
      {
        prompt: [
          [1, 2],
          [3, 4],
        ],
        n: 2,
      },
      // Each prompt answered n times, each answer billed.
      (body: Record<string, unknown>) => {
        const choices = body.choices as { index: number }[];
        expect(choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
      },
    ],
    [
      '/v1/chat/completions',
      { messages: [{ role: 'user', content: 'hi' }], n: 3, max_completion_tokens: 2 },
      // n choices, each stopped at the output limit, and billed together.
      (body: Record<string, unknown>) => {
        const choices = body.choices as { finish_reason: string; message: { content: string } }[];
        expect(choices.map((c) => c.finish_reason)).toEqual(['length', 'length', 'length']);
        expect(choices.every((c) => c.message.content.split(' ').length === 2)).toBe(true);
        expect(body.usage).toMatchObject({ completion_tokens: 6 });
      },
    ],
    [
      '/v1/responses',
      { input: 'hello', max_output_tokens: 16 },
      // A limit under the answer's length: an incomplete response, as OpenAI gives one.
      (body: Record<string, unknown>) => {
        const words = String((body.output as { content: { text: string }[] }[])[0]?.content[0]?.text).split(
          ' ',
        );
        expect(words.length).toBeLessThanOrEqual(16);
        if (words.length === 16)
          expect(body).toMatchObject({
            status: 'incomplete',
            incomplete_details: { reason: 'max_output_tokens' },
          });
        else expect(body).toMatchObject({ status: 'completed', incomplete_details: null });
      },
    ],
    [
      '/v1/moderations',
      { input: 'text' },
      (body: Record<string, unknown>) => expect(body).toMatchObject({ results: [{ flagged: false }] }),
    ],
  ] as const)('answers %s requests in its shape', async (endpoint, fields, check) => {
    const clock = new ManualClock();
    const emulator = await startEmulator({ clock, tickMs: 0, validationMs: 0, finalizingMs: 0 });
    try {
      const client = clientFor(emulator);
      const file = await uploadLines(client, [
        JSON.stringify({ custom_id: 'a', method: 'POST', url: endpoint, body: { model: 'm', ...fields } }),
      ]);
      const batch = await client.batches.create({
        input_file_id: file.id,
        endpoint,
        completion_window: '24h',
      });
      await emulator.settle();
      clock.advance(1000);
      await emulator.settle();
      const done = await client.batches.retrieve(batch.id);
      expect(done.status).toBe('completed');
      const [line] = await fileLines(client, done.output_file_id);
      check((line as { response: { body: Record<string, unknown> } }).response.body);
    } finally {
      await emulator.stop();
    }
  });

  it('gives the same answers for the same seed', async () => {
    const run = async (seed: number) => {
      const clock = new ManualClock();
      const emulator = await startEmulator({ clock, tickMs: 0, validationMs: 0, finalizingMs: 0, seed });
      try {
        const client = clientFor(emulator);
        const file = await uploadLines(client, [chatLine('a'), chatLine('b')]);
        const batch = await client.batches.create({
          input_file_id: file.id,
          endpoint: '/v1/chat/completions',
          completion_window: '24h',
        });
        await emulator.settle();
        clock.advance(1000);
        await emulator.settle();
        const lines = await fileLines(client, (await client.batches.retrieve(batch.id)).output_file_id);
        return lines
          .map((l) =>
            JSON.stringify((l as { response: { body: { choices: unknown } } }).response.body.choices),
          )
          .sort();
      } finally {
        await emulator.stop();
      }
    };
    const [a, b, c] = [await run(11), await run(11), await run(12)];
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
  });
});

describe('enqueued token limit', () => {
  it('fails a batch with token_limit_exceeded while others hold the queue, and admits it later', async () => {
    const clock = new ManualClock();
    const emulator = await startEmulator({
      tickMs: 0,
      clock,
      enqueuedTokenLimit: 500,
      requestsPerSecond: 1,
      validationMs: 10,
      finalizingMs: 0,
    });
    try {
      const client = clientFor(emulator);
      const lines = (prefix: string) =>
        Array.from({ length: 3 }, (_, i) => chatLine(`${prefix}${i}`, 'word '.repeat(100)));
      const first = await client.batches.create({
        input_file_id: (await uploadLines(client, lines('a'))).id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      });
      clock.advance(10);
      await emulator.settle();
      expect((await client.batches.retrieve(first.id)).status).toBe('in_progress');
      const second = await client.batches.create({
        input_file_id: (await uploadLines(client, lines('b'))).id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      });
      clock.advance(10);
      await emulator.settle();
      const refused = await client.batches.retrieve(second.id);
      expect(refused.status).toBe('failed');
      expect(refused.errors?.data?.[0]).toMatchObject({
        code: 'token_limit_exceeded',
        line: null,
        param: null,
        message: expect.stringMatching(/^Enqueued token limit reached for gpt-4o-mini in organization/),
      });
      clock.advance(10_000);
      await emulator.settle();
      expect((await client.batches.retrieve(first.id)).status).toBe('completed');
      const third = await client.batches.create({
        input_file_id: (await uploadLines(client, lines('c'))).id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      });
      clock.advance(10);
      await emulator.settle();
      expect((await client.batches.retrieve(third.id)).status).toBe('in_progress');
    } finally {
      await emulator.stop();
    }
  });
});

describe('faults', () => {
  let emulator: Emulator;
  beforeAll(async () => {
    emulator = await startEmulator({ tickMs: 0, faults: { slowMs: 50 } });
  });
  afterAll(() => emulator.stop());

  it.each([
    ['rate_limit', 1],
    ['server_error', 1],
    ['unavailable', 1],
    ['slow', 1],
    ['drop_before', 1],
    ['drop_after', 2],
    ['error_after', 2],
  ] as const)('%s on create: the client retries; the server created %i batch(es)', async (kind, created) => {
    const client = clientFor(emulator, { maxRetries: 3 });
    const file = await uploadLines(client, [chatLine('a')]);
    const before = emulator.engine.created;
    const injected = emulator.faults.injected[kind];
    emulator.faults.next(kind, { method: 'POST', path: /\/batches$/ });
    const batch = await client.batches.create({
      input_file_id: file.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
    });
    expect(batch.status).toBe('validating');
    expect(emulator.faults.injected[kind]).toBe(injected + 1);
    expect(emulator.engine.created - before).toBe(created);
  });

  it.each(FAULT_KINDS)('%s on every endpoint is survived by the client with retries', async (kind) => {
    const client = clientFor(emulator, { maxRetries: 4 });
    const file = await uploadLines(client, [chatLine('a')]);
    for (const [method, path] of [
      ['GET', /\/files\/[^/]+$/],
      ['GET', /\/content$/],
      ['GET', /\/batches$/],
      ['DELETE', /\/files\//],
    ] as const) {
      emulator.faults.next(kind, { method, path });
    }
    expect((await client.files.retrieve(file.id)).id).toBe(file.id);
    expect(await (await client.files.content(file.id)).text()).toContain('"custom_id":"a"');
    expect((await client.batches.list()).data).toBeDefined();
    await client.files.delete(file.id).catch((e: unknown) => {
      // An acting fault deleted the file before the client heard: its retry finds it gone.
      if (kind !== 'drop_after' && kind !== 'error_after') throw e;
      expect(e).toBeInstanceOf(OpenAI.NotFoundError);
    });
  });

  it('injects random faults at the given rate, reproducibly for a seed', async () => {
    const draws = async (seed: number) => {
      // Kinds the client retries at once (retry-after-ms) keep this quick; each kind's handling is tested above.
      const e = await startEmulator({
        tickMs: 0,
        faults: { rate: 0.3, seed, kinds: ['rate_limit', 'slow'], slowMs: 5 },
      });
      try {
        const client = clientFor(e, { maxRetries: 10 });
        for (let i = 0; i < 30; i++) await client.batches.list();
        return { ...e.faults.injected };
      } finally {
        await e.stop();
      }
    };
    const a = await draws(5);
    const total = a.rate_limit + a.slow;
    expect(total).toBeGreaterThan(3);
    expect(total).toBeLessThan(20);
    expect(await draws(5)).toEqual(a);
  });
});

describe('webhooks', () => {
  it('posts batch.completed/failed/cancelled/expired events the official client verifies, retrying non-2xx', async () => {
    const secret = `whsec_${Buffer.from('emulator-test-secret-0123456789ab').toString('base64')}`;
    const received: { body: string; headers: IncomingHttpHeaders }[] = [];
    let refuseFirst = true;
    const receiver = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => {
        body += c;
      });
      req.on('end', () => {
        if (refuseFirst) {
          refuseFirst = false;
          res.writeHead(500).end();
          return;
        }
        received.push({ body, headers: req.headers });
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
    const clock = new ManualClock();
    const emulator = await startEmulator({
      tickMs: 0,
      clock,
      completionWindowMs: 60_000,
      requestsPerSecond: 1,
      finalizingMs: 0,
      webhook: { url, secret, retryMs: 10 },
    });
    try {
      const client = clientFor(emulator);
      const make = async (lines: string[]) =>
        client.batches.create({
          input_file_id: (await uploadLines(client, lines)).id,
          endpoint: '/v1/chat/completions',
          completion_window: '24h',
        });
      const done = await make([chatLine('a')]);
      const failed = await make(['not json']);
      const cancelled = await make(Array.from({ length: 50 }, (_, i) => chatLine(`c${i}`)));
      const expired = await make(Array.from({ length: 500 }, (_, i) => chatLine(`x${i}`)));
      clock.advance(1000);
      await emulator.settle();
      await client.batches.cancel(cancelled.id);
      clock.advance(60_000);
      await emulator.settle();
      await emulator.webhooks?.idle();
      const verifier = new OpenAI({ apiKey: 'sk-test', baseURL: emulator.url, webhookSecret: secret });
      const events = await Promise.all(
        received.map(({ body, headers }) =>
          verifier.webhooks.unwrap(body, headers as unknown as Record<string, string>),
        ),
      );
      for (const event of events)
        validate(
          `WebhookBatch${event.type.slice('batch.'.length).replace(/^./, (c) => c.toUpperCase())}`,
          event,
        );
      expect(Object.fromEntries(events.map((e) => [(e.data as { id: string }).id, e.type]))).toEqual({
        [done.id]: 'batch.completed',
        [failed.id]: 'batch.failed',
        [cancelled.id]: 'batch.cancelled',
        [expired.id]: 'batch.expired',
      });
      expect(emulator.webhooks?.deliveries.map((d) => d.attempts).sort()).toEqual([1, 1, 1, 2]);
      await expect(
        verifier.webhooks.unwrap(received[0]?.body ?? '', {
          ...received[0]?.headers,
          'webhook-signature': 'v1,AAAA',
        } as unknown as Record<string, string>),
      ).rejects.toThrow();
    } finally {
      await emulator.stop();
      receiver.close();
    }
  });
});

describe('persistence', () => {
  it('keeps files and batches in a data directory across a restart, and carries on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'emulator-state-'));
    try {
      const clock = new ManualClock();
      const options = {
        dataDir: dir,
        clock,
        tickMs: 0,
        validationMs: 100,
        requestsPerSecond: 10,
        finalizingMs: 0,
      };
      let emulator = await startEmulator(options);
      let client = clientFor(emulator);
      const file = await uploadLines(
        client,
        Array.from({ length: 10 }, (_, i) => chatLine(`p${i}`)),
      );
      const batch = await client.batches.create({
        input_file_id: file.id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      });
      clock.advance(100);
      await emulator.settle();
      await emulator.stop();

      emulator = await startEmulator(options);
      client = clientFor(emulator);
      expect((await client.files.retrieve(file.id)).bytes).toBe(file.bytes);
      expect((await client.batches.retrieve(batch.id)).status).toBe('in_progress');
      clock.advance(5000);
      await emulator.settle();
      const done = await client.batches.retrieve(batch.id);
      expect(done.status).toBe('completed');
      expect(await fileLines(client, done.output_file_id)).toHaveLength(10);
      await emulator.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('listens on loopback only', async () => {
    await expect(startEmulator({ host: '0.0.0.0' })).rejects.toThrow(/loopback only/);
  });
});

describe('a full-size batch', () => {
  it('runs 50,000 requests through to 50,000 output lines', async () => {
    const clock = new ManualClock();
    const emulator = await startEmulator({ clock, tickMs: 0, validationMs: 0, finalizingMs: 0 });
    try {
      const client = clientFor(emulator);
      const lines = Array.from({ length: 50_000 }, (_, i) => chatLine(`n${i}`, `q${i}`));
      const batch = await client.batches.create({
        input_file_id: (await uploadLines(client, lines)).id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      });
      await emulator.settle();
      clock.advance(50_000); // 1,000 a second
      await emulator.settle();
      const done = await client.batches.retrieve(batch.id);
      expect(done.request_counts).toEqual({ total: 50_000, completed: 50_000, failed: 0 });
      const ids = new Set((await fileLines(client, done.output_file_id)).map((l) => l.custom_id));
      expect(ids.size).toBe(50_000);
    } finally {
      await emulator.stop();
    }
  });
});
