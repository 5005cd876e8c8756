import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../local/emulator/clock';
import { type Emulator, startEmulator } from '../../../local/emulator/server';
import { clientFor, fileLines, uploadLines } from '../../support/emulator';
import { openapiValidator } from '../../support/openapi';

/**
 * What a validating client sees, through the official `openai` client: every endpoint's answer body
 * matches the spec's response schema, a body OpenAI's request schema refuses fails alone with OpenAI's
 * 400, and the smaller things OpenAI does (no expiry on non-batch files, list limits, counts on cancel).
 */

const validate = openapiValidator();
const user = [{ role: 'user', content: 'hello' }];

let clock: ManualClock;
let emulator: Emulator;
let client: OpenAI;
beforeAll(async () => {
  clock = new ManualClock(Date.UTC(2026, 10, 25));
  emulator = await startEmulator({ clock, tickMs: 0, validationMs: 1000, finalizingMs: 0, seed: 5 });
  client = clientFor(emulator, { maxRetries: 0 });
});
afterAll(() => emulator.stop());

const line = (customId: string, endpoint: string, body: Record<string, unknown>) =>
  JSON.stringify({ custom_id: customId, method: 'POST', url: endpoint, body });

/** Runs a batch to its end and gives the batch with its output and error lines by custom_id. */
async function run(endpoint: OpenAI.BatchCreateParams['endpoint'], lines: string[]) {
  const file = await uploadLines(client, lines);
  const created = await client.batches.create({ input_file_id: file.id, endpoint, completion_window: '24h' });
  for (let i = 0; i < 3; i++) {
    clock.advance(1000);
    await emulator.settle();
  }
  const batch = await client.batches.retrieve(created.id);
  const byId = async (id: string | null | undefined) =>
    Object.fromEntries(
      (await fileLines(client, id)).map((l) => [l.custom_id as string, l as Record<string, unknown>]),
    );
  return { batch, outputs: await byId(batch.output_file_id), errors: await byId(batch.error_file_id) };
}

describe('answers a validating client accepts', () => {
  it.each([
    [
      '/v1/chat/completions',
      { messages: user, tools: [{ type: 'function', function: { name: 'f' } }] },
      'CreateChatCompletionResponse',
    ],
    ['/v1/completions', { prompt: 'once upon' }, 'CreateCompletionResponse'],
    ['/v1/embeddings', { input: ['one', 'two'], dimensions: 8 }, 'CreateEmbeddingResponse'],
    ['/v1/responses', { input: 'hello', instructions: 'be brief', temperature: 0.5 }, 'Response'],
    ['/v1/responses', { input: [{ role: 'user', content: 'hello' }], metadata: { k: 'v' } }, 'Response'],
    ['/v1/moderations', { input: 'some text' }, 'CreateModerationResponse'],
    [
      '/v1/images/generations',
      { prompt: 'a red fox', model: 'gpt-image-1', size: '1024x1536', n: 2 },
      'ImagesResponse',
    ],
    ['/v1/images/generations', { prompt: 'a lighthouse', model: 'dall-e-3' }, 'ImagesResponse'],
    [
      '/v1/images/edits',
      {
        prompt: 'add a hat',
        model: 'gpt-image-1',
        images: [{ image_url: 'data:image/png;base64,iVBORw0KGgo=' }],
      },
      'ImagesResponse',
    ],
    ['/v1/videos', { prompt: 'waves at dusk', model: 'sora-2', seconds: '8' }, 'VideoResource'],
  ] as const)('answers %s with a body that matches the spec (%j)', async (endpoint, fields, schema) => {
    const { batch, outputs } = await run(endpoint, [line('a', endpoint, { model: 'm', ...fields })]);
    expect(batch.status).toBe('completed');
    validate('Batch', batch);
    const body = (outputs.a as { response: { status_code: number; body: unknown } }).response;
    expect(body.status_code).toBe(200);
    validate(schema, body.body);
  });

  it('echoes the request settings a Response carries', async () => {
    const { outputs } = await run('/v1/responses', [
      line('a', '/v1/responses', {
        model: 'gpt-4o-mini',
        input: 'hi',
        instructions: 'be brief',
        temperature: 0.5,
        top_p: 0.9,
        metadata: { k: 'v' },
        tools: [{ type: 'function', name: 'f', parameters: {}, strict: true }],
        tool_choice: 'none',
        parallel_tool_calls: false,
      }),
    ]);
    const body = (outputs.a as { response: { body: Record<string, unknown> } }).response.body;
    expect(body).toMatchObject({
      error: null,
      incomplete_details: null,
      instructions: 'be brief',
      temperature: 0.5,
      top_p: 0.9,
      metadata: { k: 'v' },
      tool_choice: 'none',
      parallel_tool_calls: false,
      tools: [{ type: 'function', name: 'f' }],
      usage: { input_tokens_details: { cached_tokens: 0 } },
    });
  });

  it('scores every moderation category, with the input types each applies to', async () => {
    const { outputs } = await run('/v1/moderations', [
      line('a', '/v1/moderations', { model: 'm', input: 'x' }),
    ]);
    const [result] = (outputs.a as { response: { body: { results: Record<string, object>[] } } }).response
      .body.results as [Record<string, Record<string, unknown>>];
    expect(Object.keys(result.categories ?? {})).toHaveLength(13);
    expect(Object.keys(result.category_scores ?? {})).toEqual(Object.keys(result.categories ?? {}));
    expect(result.category_applied_input_types?.violence).toEqual(['text']);
  });
});

describe('request bodies refused as OpenAI refuses them', () => {
  it('fails each bad request alone with a 400 naming the param and the rule; the rest succeed', async () => {
    const chat = (id: string, extra: Record<string, unknown>) =>
      line(id, '/v1/chat/completions', { model: 'gpt-4o-mini', messages: user, ...extra });
    const { batch, outputs, errors } = await run('/v1/chat/completions', [
      chat('ok', { temperature: 1, a_parameter_from_next_week: true }),
      chat('tools', { tools: [] }),
      chat('hot', { temperature: 9 }),
      chat('many', { max_completion_tokens: 'many' }),
    ]);
    expect(batch.status).toBe('completed');
    expect(batch.request_counts).toEqual({ total: 4, completed: 1, failed: 3 });
    expect(Object.keys(outputs)).toEqual(['ok']);
    const answers = Object.fromEntries(
      Object.entries(errors).map(([id, l]) => {
        const response = l.response as { status_code: number; body: unknown };
        expect(response.status_code).toBe(400);
        expect(l.error).toBeNull();
        validate('ErrorResponse', response.body);
        return [id, (response.body as { error: unknown }).error];
      }),
    );
    expect(answers).toEqual({
      tools: {
        type: 'invalid_request_error',
        code: 'empty_array',
        param: 'tools',
        message:
          "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty array instead.",
      },
      hot: {
        type: 'invalid_request_error',
        code: 'decimal_above_max_value',
        param: 'temperature',
        message:
          "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 9 instead.",
      },
      many: {
        type: 'invalid_request_error',
        code: 'invalid_type',
        param: 'max_completion_tokens',
        message: "Invalid type for 'max_completion_tokens': expected an integer, but got a string instead.",
      },
    });
  });

  it('checks the other endpoints against their own schemas', async () => {
    const { errors, outputs } = await run('/v1/embeddings', [
      line('ok', '/v1/embeddings', { model: 'e', input: 'x' }),
      line('zero', '/v1/embeddings', { model: 'e', input: 'x', dimensions: 0 }),
    ]);
    expect(Object.keys(outputs)).toEqual(['ok']);
    expect((errors.zero as { response: { body: { error: unknown } } }).response.body.error).toMatchObject({
      code: 'integer_below_min_value',
      param: 'dimensions',
    });
  });
});

describe('smaller things OpenAI does', () => {
  it('counts every request of a batch cancelled while validating, as its error file lists them', async () => {
    const file = await uploadLines(client, [
      line('a', '/v1/chat/completions', { model: 'm', messages: user }),
      line('b', '/v1/chat/completions', { model: 'm', messages: user }),
    ]);
    const created = await client.batches.create({
      input_file_id: file.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
    });
    expect((await client.batches.cancel(created.id)).status).toBe('cancelling');
    for (let i = 0; i < 3; i++) {
      clock.advance(1000);
      await emulator.settle();
    }
    const cancelled = await client.batches.retrieve(created.id);
    validate('Batch', cancelled);
    expect(cancelled.status).toBe('cancelled');
    expect(cancelled.request_counts).toEqual({ total: 2, completed: 0, failed: 2 });
    expect(await fileLines(client, cancelled.error_file_id)).toHaveLength(2);
  });

  it('names output files after the batch id, without a doubled prefix', async () => {
    const { batch } = await run('/v1/chat/completions', [
      line('a', '/v1/chat/completions', { model: 'm', messages: user }),
      line('b', '/v1/chat/completions', { model: 'm', messages: user, tools: [] }),
    ]);
    const output = await client.files.retrieve(batch.output_file_id ?? '');
    const error = await client.files.retrieve(batch.error_file_id ?? '');
    validate('OpenAIFile', output);
    expect(output.filename).toBe(`${batch.id}_output.jsonl`);
    expect(error.filename).toBe(`${batch.id}_error.jsonl`);
    expect(output.purpose).toBe('batch_output');
  });

  it('gives an expiry to batch input files only, unless expires_after asks for one', async () => {
    const upload = (purpose: OpenAI.FilePurpose, extra: Partial<OpenAI.FileCreateParams> = {}) =>
      client.files.create({
        file: new File(['{"a":1}\n'], 'x.jsonl'),
        purpose,
        ...extra,
      });
    const batchFile = await upload('batch');
    const userFile = await upload('user_data');
    const expiring = await upload('user_data', { expires_after: { anchor: 'created_at', seconds: 3600 } });
    for (const file of [batchFile, userFile, expiring]) validate('OpenAIFile', file);
    expect(batchFile.expires_at).toBe(batchFile.created_at + 30 * 24 * 3600);
    expect(userFile.expires_at).toBeNull();
    expect(expiring.expires_at).toBe(expiring.created_at + 3600);
    clock.advance(31 * 24 * 3600 * 1000);
    expect((await client.files.retrieve(userFile.id)).id).toBe(userFile.id);
    await expect(client.files.retrieve(batchFile.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });

  it.each([
    [
      '/batches?limit=0',
      'integer_below_min_value',
      "Invalid 'limit': integer below minimum value. Expected a value >= 1, but got 0 instead.",
    ],
    [
      '/batches?limit=101',
      'integer_above_max_value',
      "Invalid 'limit': integer above maximum value. Expected a value <= 100, but got 101 instead.",
    ],
    [
      '/batches?limit=many',
      'invalid_type',
      "Invalid type for 'limit': expected an integer, but got a string instead.",
    ],
    [
      '/files?limit=10001',
      'integer_above_max_value',
      "Invalid 'limit': integer above maximum value. Expected a value <= 10000, but got 10001 instead.",
    ],
  ])('refuses a list limit outside the spec (%s) with a 400', async (path, code, message) => {
    const response = await fetch(`${emulator.url}${path}`, { headers: { authorization: 'Bearer sk-test' } });
    expect(response.status).toBe(400);
    const body = await response.json();
    validate('ErrorResponse', body);
    expect(body).toEqual({ error: { type: 'invalid_request_error', code, param: 'limit', message } });
  });

  it('refuses an out-of-range limit through the official client too', async () => {
    await expect(client.batches.list({ limit: 101 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    expect((await client.batches.list({ limit: 100 })).data.length).toBeGreaterThan(0);
  });
});
