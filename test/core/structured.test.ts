import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { DatasetLine } from '../../functions/core/dataset';
import { ConfigError } from '../../functions/core/errors';
import { IdRegistry } from '../../functions/core/ids';
import type { BatchOutputItem, Endpoint } from '../../functions/core/items';
import { buildRequests } from '../../functions/core/requests';
import { checkOutput, formatPromptOf, type StructuredOutput } from '../../functions/core/structured';
import { defineWork } from '../../functions/core/work';
import { requestTokens, tokenizerOf } from '../../local/estimate';
import { collect, fromArray } from '../support/streams';

const Answer = z.object({
  label: z.enum(['positive', 'negative', 'neutral']),
  score: z.number().min(0).max(1),
  note: z.string().nullable(),
});

function problemsOf(config: () => unknown): string[] {
  try {
    config();
  } catch (caught) {
    if (caught instanceof ConfigError) return [...caught.problems];
    throw caught;
  }
  throw new Error('defineWork did not throw');
}

function structuredOf(endpoint: Endpoint = '/v1/chat/completions'): StructuredOutput {
  const work = defineWork({ name: 't', endpoint, outputSchema: Answer });
  if (!work.structured) throw new Error('no structured output');
  return work.structured;
}

async function bodiesOf(endpoint: Endpoint, records: Record<string, unknown>[]) {
  const work = defineWork({ name: 't', model: 'gpt-4o-mini', endpoint, outputSchema: Answer });
  const lines: DatasetLine[] = records.map((record, i) => ({ kind: 'record', line: i + 1, end: 0, record }));
  const events = await collect(buildRequests(fromArray(lines), work, new IdRegistry()));
  return events.map((e) => {
    if (e.kind !== 'request') throw new Error(`line not built: ${JSON.stringify(e)}`);
    return JSON.parse(e.request.json).body as Record<string, unknown>;
  });
}

const chatItem = (message: Record<string, unknown>, finishReason = 'stop'): BatchOutputItem => ({
  id: 'r1',
  status: 'success',
  statusCode: 200,
  requestId: 'req_1',
  batchId: 'batch_1',
  model: 'gpt-4o-mini',
  content: typeof message.content === 'string' ? message.content : null,
  embedding: null,
  usage: null,
  response: { choices: [{ index: 0, message, finish_reason: finishReason }] },
});

describe('outputSchema at defineWork', () => {
  it('builds the strict json_schema format with the official helper, for chat and responses', () => {
    expect(structuredOf('/v1/chat/completions').format).toEqual({
      type: 'json_schema',
      json_schema: {
        name: 'output',
        strict: true,
        schema: expect.objectContaining({
          type: 'object',
          required: ['label', 'score', 'note'],
          additionalProperties: false,
        }),
      },
    });
    expect(structuredOf('/v1/responses').format).toMatchObject({
      type: 'json_schema',
      name: 'output',
      strict: true,
      schema: { type: 'object', additionalProperties: false },
    });
  });

  it('refuses other endpoints, naming the endpoint', () => {
    expect(
      problemsOf(() => defineWork({ name: 't', endpoint: '/v1/embeddings', outputSchema: Answer })),
    ).toEqual([
      'outputSchema: structured outputs exist only for /v1/chat/completions and /v1/responses, not for endpoint /v1/embeddings',
    ]);
  });

  it('refuses a schema strict mode cannot express, with the reason', () => {
    const [optional] = problemsOf(() =>
      defineWork({ name: 't', outputSchema: z.object({ a: z.string().optional() }) }),
    );
    expect(optional).toMatch(
      /^outputSchema: OpenAI's strict structured outputs cannot express this schema: .*properties\/a.*\.optional\(\)/,
    );
    const [record] = problemsOf(() =>
      defineWork({ name: 't', outputSchema: z.object({ m: z.record(z.string(), z.number()) }) }),
    );
    expect(record).toMatch(/additionalProperties: false/);
    const [root] = problemsOf(() => defineWork({ name: 't', outputSchema: z.string() }));
    expect(root).toMatch(/Root schema must have type: 'object'/);
  });

  it('keeps maxOutputRetries within maxResubmits', () => {
    expect(problemsOf(() => defineWork({ name: 't', maxOutputRetries: 3 }))).toEqual([
      'maxOutputRetries: must not be above maxResubmits (an output retry is a resubmit) (got 3)',
    ]);
    expect(defineWork({ name: 't', maxOutputRetries: 2 }).settings.maxOutputRetries).toBe(2);
  });
});

describe('requests with an outputSchema', () => {
  it('ask chat for the format unless the upload hook set its own response_format', async () => {
    const own = { type: 'json_object' };
    const [plain, custom] = await bodiesOf('/v1/chat/completions', [
      { id: 'a', messages: [{ role: 'user', content: 'hi' }] },
      { id: 'b', messages: [{ role: 'user', content: 'hi, in JSON' }], response_format: own },
    ]);
    expect(plain?.response_format).toEqual(structuredOf().format);
    expect(custom?.response_format).toEqual(own);
  });

  it('ask responses for text.format, keeping the other text settings, unless the hook set a format', async () => {
    const [plain, verbose, custom] = await bodiesOf('/v1/responses', [
      { id: 'a', input: 'hi' },
      { id: 'b', input: 'hi', text: { verbosity: 'low' } },
      { id: 'c', input: 'hi', text: { format: { type: 'text' } } },
    ]);
    const format = structuredOf('/v1/responses').format;
    expect(plain?.text).toEqual({ format });
    expect(verbose?.text).toEqual({ verbosity: 'low', format });
    expect(custom?.text).toEqual({ format: { type: 'text' } });
  });
});

describe('checkOutput', () => {
  const output = structuredOf();

  it('parses an answer that matches the schema', () => {
    const content = JSON.stringify({ label: 'neutral', score: 0.5, note: null });
    const checked = checkOutput(output, chatItem({ role: 'assistant', content, refusal: null }), 4);
    expect(checked).toMatchObject({ item: { id: 'r1', content, parsed: { label: 'neutral', score: 0.5 } } });
  });

  it.each([
    ['not JSON', { content: '{"label": "neu' }, 'stop', 'invalid_output', /the answer is not JSON: /],
    [
      'off the schema',
      { content: '{"label":"great","score":2,"note":null}' },
      'stop',
      'invalid_output',
      /does not match the work's outputSchema: label: .*; score: /,
    ],
    [
      'a refusal',
      { content: null, refusal: 'I cannot.' },
      'stop',
      'refusal',
      /refused to answer: I cannot\./,
    ],
    ['cut off', { content: '{"label":' }, 'length', 'output_truncated', /cut off \(finish_reason: length\)/],
  ])(
    'puts an answer %s in errors with its code, the raw content and the reason',
    (_, message, finish, code, reason) => {
      const item = chatItem({ role: 'assistant', refusal: null, ...message }, finish);
      const checked = checkOutput(output, item, 4);
      if (!('error' in checked)) throw new Error('accepted');
      expect(checked.error).toMatchObject({
        stage: 'openai',
        code,
        id: 'r1',
        line: 4,
        batchId: 'batch_1',
        requestId: 'req_1',
        content: message.content ?? message.refusal,
        response: item.response,
      });
      expect(checked.error.message).toMatch(/^line 4: request "r1": /);
      expect(checked.error.message).toMatch(reason);
    },
  );

  it('reads a response refusal and an incomplete response', () => {
    const responses = structuredOf('/v1/responses');
    const base = { ...chatItem({}), content: null };
    const refused = checkOutput(
      responses,
      {
        ...base,
        response: {
          status: 'completed',
          output: [{ type: 'message', content: [{ type: 'refusal', refusal: 'No.' }] }],
        },
      },
      1,
    );
    expect('error' in refused && refused.error.code).toBe('refusal');
    const cut = checkOutput(
      responses,
      {
        ...base,
        content: '{"la',
        response: { status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' }, output: [] },
      },
      1,
    );
    expect('error' in cut && cut.error).toMatchObject({
      code: 'output_truncated',
      message: expect.stringContaining('status: incomplete, reason: max_output_tokens'),
    });
  });
});

describe('typing', () => {
  it('types item.parsed from the schema in download', () => {
    const work = defineWork({
      name: 't',
      record: z.object({ id: z.string() }),
      outputSchema: Answer,
      download: (item) => ({ id: item.id, label: item.parsed.label, score: item.parsed.score }),
    });
    const parsed: z.infer<typeof Answer> = { label: 'positive', score: 1, note: null };
    expect(work.download({ ...chatItem({}), parsed })).toEqual({ id: 'r1', label: 'positive', score: 1 });
  });
});

describe('estimate counts the schema', () => {
  const messages = [{ role: 'user', content: 'Label this review: fine.' }];
  const count = tokenizerOf('gpt-4o-mini').count;

  it('adds the tokens of the schema as shown to the model, on chat and responses', () => {
    const chat = { model: 'gpt-4o-mini', messages, response_format: structuredOf().format };
    const shown = formatPromptOf('/v1/chat/completions', chat);
    expect(shown).toMatch(/^# Response Formats\n\n## output\n\n\{"type":"object","properties":\{"label"/);
    expect(shown).not.toContain('$schema');
    const plain = requestTokens('/v1/chat/completions', { model: 'gpt-4o-mini', messages });
    expect(requestTokens('/v1/chat/completions', chat) - plain).toBe(count(shown ?? ''));

    const responses = {
      model: 'gpt-4o-mini',
      input: 'Label: fine.',
      text: { format: structuredOf('/v1/responses').format },
    };
    const plainResponse = requestTokens('/v1/responses', { model: 'gpt-4o-mini', input: 'Label: fine.' });
    expect(requestTokens('/v1/responses', responses) - plainResponse).toBe(
      count(formatPromptOf('/v1/responses', responses) ?? ''),
    );
  });

  it('grows with the schema and counts nothing for a format without one', () => {
    const bigger = defineWork({
      name: 't',
      outputSchema: Answer.extend({ reasons: z.array(z.object({ quote: z.string(), weight: z.number() })) }),
    }).structured?.format;
    const tokens = (response_format: unknown) =>
      requestTokens('/v1/chat/completions', { model: 'gpt-4o-mini', messages, response_format });
    expect(tokens(bigger)).toBeGreaterThan(tokens(structuredOf().format));
    expect(tokens({ type: 'json_object' })).toBe(tokens(undefined));
    expect(formatPromptOf('/v1/responses', { text: { format: { type: 'text' } } })).toBeNull();
  });
});
