import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { errorItem } from '../../functions/core/items';
import {
  isRetryable,
  type ResultEvent,
  ResultLineSchema,
  readResults,
  resultOf,
} from '../../functions/core/results';
import { chunksOf, collect } from '../support/streams';

const jsonl = (...lines: unknown[]) =>
  `${lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n')}\n`;
const read = (text: string, lineOf?: (id: string) => number | null) =>
  collect(readResults(chunksOf(text, 7), 'batch_1', lineOf));

const chatLine = {
  id: 'batch_req_1',
  custom_id: 'a',
  response: {
    status_code: 200,
    request_id: 'req_1',
    body: {
      id: 'chatcmpl-1',
      object: 'chat.completion',
      model: 'gpt-4o-mini-2024-07-18',
      choices: [{ index: 0, message: { role: 'assistant', content: 'Hello there' }, finish_reason: 'stop' }],
      usage: {
        prompt_tokens: 20,
        completion_tokens: 3,
        total_tokens: 23,
        prompt_tokens_details: { cached_tokens: 4 },
        completion_tokens_details: { reasoning_tokens: 1 },
      },
    },
  },
  error: null,
};

describe('readResults', () => {
  it('reads a chat result into an output item with content and usage', async () => {
    const [event] = await read(jsonl(chatLine), () => 12);
    expect(event).toEqual({
      kind: 'output',
      item: {
        id: 'a',
        status: 'success',
        statusCode: 200,
        requestId: 'req_1',
        batchId: 'batch_1',
        model: 'gpt-4o-mini-2024-07-18',
        content: 'Hello there',
        embedding: null,
        usage: { inputTokens: 20, outputTokens: 3, totalTokens: 23, cachedTokens: 4, reasoningTokens: 1 },
        response: chatLine.response.body,
      },
    });
  });

  it('reads an embedding asked as base64 (encoding_format) as its numbers', async () => {
    const values = [0.5, -0.25, 0.125];
    const base64 = Buffer.from(new Float32Array(values).buffer).toString('base64');
    const events = await read(
      jsonl({
        custom_id: 'b',
        response: { status_code: 200, body: { object: 'list', data: [{ embedding: base64 }] } },
      }),
    );
    expect(events.map((e) => (e.kind === 'output' ? e.item.embedding : e.kind))).toEqual([values]);
  });

  it('reads embeddings, responses and completions results', async () => {
    const events = await read(
      jsonl(
        {
          custom_id: 'e',
          response: {
            status_code: 200,
            body: {
              object: 'list',
              data: [{ embedding: [0.1, 0.2] }],
              usage: { prompt_tokens: 5, total_tokens: 5 },
            },
          },
        },
        {
          custom_id: 'r',
          response: {
            status_code: 200,
            body: {
              object: 'response',
              output: [
                {
                  type: 'message',
                  content: [
                    { type: 'output_text', text: 'Hi' },
                    { type: 'output_text', text: '!' },
                  ],
                },
              ],
              usage: {
                input_tokens: 7,
                output_tokens: 2,
                total_tokens: 9,
                input_tokens_details: { cached_tokens: 0 },
                output_tokens_details: { reasoning_tokens: 0 },
              },
            },
          },
        },
        { custom_id: 'c', response: { status_code: 200, body: { choices: [{ text: 'once upon' }] } } },
      ),
    );
    const items = events.map((e) =>
      e.kind === 'output'
        ? [e.item.id, e.item.content, e.item.embedding, e.item.usage?.totalTokens ?? null]
        : e.kind,
    );
    expect(items).toEqual([
      ['e', null, [0.1, 0.2], 5],
      ['r', 'Hi!', null, 9],
      ['c', 'once upon', null, null],
    ]);
  });

  it('reads an HTTP failure (error file shape) and a non-HTTP failure as errors with their codes', async () => {
    const events = await read(
      jsonl(
        {
          id: 'batch_req_2',
          custom_id: 'b',
          response: {
            status_code: 400,
            request_id: 'req_2',
            body: {
              error: {
                message: 'Bad model',
                type: 'invalid_request_error',
                param: 'model',
                code: 'model_not_found',
              },
            },
          },
          error: null,
        },
        {
          id: 'batch_req_3',
          custom_id: 'c',
          response: null,
          error: {
            code: 'batch_expired',
            message: 'This request could not be executed before the completion window expired.',
          },
        },
        { custom_id: 'd', response: { status_code: 500, body: {} } },
      ),
      (id) => ({ b: 2, c: 3, d: 4 })[id] ?? null,
    );
    expect(
      events.map(
        (e) => e.kind === 'error' && [e.item.id, e.item.code, e.item.statusCode, e.item.line, e.item.message],
      ),
    ).toEqual([
      ['b', 'model_not_found', 400, 2, 'Bad model'],
      [
        'c',
        'batch_expired',
        null,
        3,
        'This request could not be executed before the completion window expired.',
      ],
      ['d', 'http_500', 500, 4, 'OpenAI answered HTTP 500'],
    ]);
  });

  it('reports a truncated or corrupt line as malformed, naming the file line, and reads on', async () => {
    const text = `${JSON.stringify(chatLine)}\nnot json\n{"no_custom_id":1}\n${JSON.stringify(chatLine).slice(0, 40)}`;
    const events: ResultEvent[] = await read(text);
    expect(
      events.map((e) => (e.kind === 'malformed' ? [e.fileLine, e.item.code, e.item.message] : e.kind)),
    ).toEqual([
      'output',
      [
        2,
        'malformed_result',
        'line 2 of the result file of batch batch_1 is not valid JSON (truncated or corrupt file)',
      ],
      [
        3,
        'malformed_result',
        'line 3 of the result file of batch batch_1 is not a batch result line (no custom_id or a bad response)',
      ],
      [
        4,
        'malformed_result',
        'line 4 of the result file of batch batch_1 is not valid JSON (truncated or corrupt file)',
      ],
    ]);
  });
});

describe('readResults on lines of every shape', () => {
  it('gives what the result line schema gives (the common shapes are checked by hand, the rest by it)', async () => {
    const text = fc.option(fc.constantFrom('', 'x', 'req_1'), { nil: undefined });
    const loose = fc.oneof(
      fc.constant(null),
      fc.constant(undefined),
      fc.integer(),
      fc.boolean(),
      fc.string(),
    );
    const field = <T>(arb: fc.Arbitrary<T>) => fc.oneof(arb, loose, fc.constant([]));
    const response = fc.record(
      {
        status_code: field(fc.constantFrom(200, 400, 500, 200.5, 2 ** 60)),
        request_id: field(text),
        body: fc.oneof(
          loose,
          fc.constant({ model: 'm', error: { code: 'c', message: 'm' } }),
          fc.constant([1]),
        ),
      },
      { requiredKeys: [] },
    );
    const error = fc.record({ code: field(text), message: field(text) }, { requiredKeys: [] });
    const line = fc.oneof(
      fc.record(
        {
          id: field(text),
          custom_id: field(fc.constantFrom('a', 'b', '')),
          response: field(response),
          error: field(error),
          extra: loose,
        },
        { requiredKeys: [] },
      ),
      loose,
      fc.constant([{ custom_id: 'a' }]),
    );
    await fc.assert(
      fc.asyncProperty(line, async (value) => {
        const lineOf = (id: string) => (id === 'a' ? 7 : null);
        const events = await collect(
          readResults(chunksOf(`${JSON.stringify(value) ?? 'null'}\n`), 'b1', lineOf),
        );
        const parsed = ResultLineSchema.safeParse(JSON.parse(JSON.stringify(value) ?? 'null'));
        if (!parsed.success) expect(events.map((event) => event.kind)).toEqual(['malformed']);
        else expect(events).toEqual([resultOf(parsed.data, 'b1', lineOf(parsed.data.custom_id))]);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('isRetryable', () => {
  it.each([
    ['batch_expired', null, true],
    ['request_timeout', null, true],
    ['http_500', 500, true],
    ['rate_limit_exceeded', 429, true],
    ['model_not_found', 400, false],
    ['batch_cancelled', null, false],
  ])('%s (HTTP %s) -> %s', (code, statusCode, expected) => {
    expect(isRetryable(errorItem({ stage: 'openai', code, message: '', statusCode }))).toBe(expected);
  });
});
