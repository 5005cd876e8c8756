import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { checkRequestBody, VALIDATED_ENDPOINTS } from '../../functions/core/request-bodies';
import { structuredOutputOf } from '../../functions/core/structured';

const user = [{ role: 'user', content: 'hi' }];
const chat = (extra: Record<string, unknown>) => ({ model: 'gpt-4o-mini', messages: user, ...extra });

describe('checkRequestBody', () => {
  it('covers every endpoint the Batch API takes', () => {
    expect([...VALIDATED_ENDPOINTS].sort()).toEqual(
      [
        '/v1/chat/completions',
        '/v1/completions',
        '/v1/embeddings',
        '/v1/images/edits',
        '/v1/images/generations',
        '/v1/moderations',
        '/v1/responses',
        '/v1/videos',
      ].sort(),
    );
  });

  it.each([
    [
      '/v1/chat/completions',
      chat({ temperature: 0.2, max_completion_tokens: 50, logit_bias: { '42': -100 } }),
    ],
    [
      '/v1/chat/completions',
      {
        model: 'gpt-4o',
        messages: [
          { role: 'developer', content: 'be brief' },
          {
            role: 'user',
            content: [
              { type: 'text', text: 'what is this?' },
              { type: 'image_url', image_url: { url: 'https://example.com/a.png', detail: 'low' } },
            ],
          },
          {
            role: 'assistant',
            content: null,
            tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } }],
          },
          { role: 'tool', tool_call_id: 'c1', content: 'done' },
        ],
        tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
        response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object' } } },
        seed: 1,
        temperature: null,
      },
    ],
    ['/v1/embeddings', { model: 'text-embedding-3-small', input: [[1, 2], [3]], dimensions: 256 }],
    [
      '/v1/responses',
      {
        model: 'gpt-4o-mini',
        input: [{ role: 'user', content: [{ type: 'input_text', text: 'hi' }] }],
        tools: [],
        reasoning: { effort: 'low' },
        text: { format: { type: 'json_schema', name: 'x', schema: { type: 'object' } } },
      },
    ],
    ['/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: ['a', 'b'], max_tokens: 5 }],
    ['/v1/moderations', { model: 'omni-moderation-latest', input: [{ type: 'text', text: 'x' }] }],
    ['/v1/images/generations', { model: 'gpt-image-1', prompt: 'a cat', n: 1, size: '1024x1024' }],
    [
      '/v1/images/edits',
      { model: 'gpt-image-1', prompt: 'a hat', images: [{ image_url: 'https://x/a.png' }] },
    ],
    ['/v1/videos', { model: 'sora-2', prompt: 'a cat' }],
  ])('takes a valid %s body, unknown parameters included', (endpoint, body) => {
    expect(
      checkRequestBody(endpoint, { ...body, a_parameter_from_next_week: [1, { x: null }] }),
    ).toBeUndefined();
  });

  it.each([
    [
      chat({ tools: [] }),
      'empty_array',
      'tools',
      "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty array instead.",
    ],
    [
      chat({ temperature: 9 }),
      'decimal_above_max_value',
      'temperature',
      "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 9 instead.",
    ],
    [
      chat({ max_completion_tokens: 'many' }),
      'invalid_type',
      'max_completion_tokens',
      "Invalid type for 'max_completion_tokens': expected an integer, but got a string instead.",
    ],
    [
      chat({ max_tokens: 2.5 }),
      'invalid_type',
      'max_tokens',
      "Invalid type for 'max_tokens': expected an integer, but got a decimal number instead.",
    ],
    [
      chat({ n: 130 }),
      'integer_above_max_value',
      'n',
      "Invalid 'n': integer above maximum value. Expected a value <= 128, but got 130 instead.",
    ],
    [
      { model: 'gpt-4o-mini', messages: [] },
      'empty_array',
      'messages',
      "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
    ],
    [
      { model: 'gpt-4o-mini', messages: [{ content: 'x' }] },
      'missing_required_parameter',
      'messages[0].role',
      "Missing required parameter: 'messages[0].role'.",
    ],
    [
      { model: 'gpt-4o-mini', messages: [{ role: 'user', content: [{ text: 'x' }] }] },
      'missing_required_parameter',
      'messages[0].content[0].type',
      "Missing required parameter: 'messages[0].content[0].type'.",
    ],
    [
      { model: 'gpt-4o-mini', messages: [{ role: 'assistant', content: 'x', tool_calls: [] }] },
      'empty_array',
      'messages[0].tool_calls',
      "Invalid 'messages[0].tool_calls': empty array. Expected an array with minimum length 1, but got an empty array instead.",
    ],
    [
      chat({ reasoning_effort: 'ultra' }),
      'invalid_value',
      'reasoning_effort',
      "Invalid value: 'ultra'. Supported values are: 'none', 'minimal', 'low', 'medium', 'high', 'xhigh', and 'max'.",
    ],
    [
      { model: 'gpt-4o-mini', messages: [{ role: 'user', content: { text: 'x' } }] },
      'invalid_type',
      'messages[0].content',
      "Invalid type for 'messages[0].content': expected one of a string or an array, but got an object instead.",
    ],
    [
      chat({ tools: [{ type: 'function' }] }),
      'missing_required_parameter',
      'tools[0].function',
      "Missing required parameter: 'tools[0].function'.",
    ],
  ])('refuses %j with OpenAI code %s on %s', (body, code, param, message) => {
    const problem = checkRequestBody('/v1/chat/completions', body);
    expect(problem).toMatchObject({ code, param });
    if (message) expect(problem?.message).toBe(message);
  });

  it('refuses strings and arrays out of their length bounds with the words OpenAI uses for each', () => {
    const edit = (fields: Record<string, unknown>) =>
      checkRequestBody('/v1/images/edits', { images: [{ file_id: 'f' }], prompt: 'p', ...fields });
    expect(edit({ prompt: '' })).toEqual({
      code: 'empty_string',
      param: 'prompt',
      message:
        "Invalid 'prompt': empty string. Expected a string with minimum length 1, but got an empty string instead.",
    });
    expect(edit({ prompt: 'p'.repeat(32_001) })).toEqual({
      code: 'string_above_max_length',
      param: 'prompt',
      message:
        "Invalid 'prompt': string too long. Expected a string with maximum length 32000, but got a string with length 32001 instead.",
    });
    expect(edit({ images: Array.from({ length: 17 }, () => ({ file_id: 'f' })) })).toEqual({
      code: 'array_above_max_length',
      param: 'images',
      message:
        "Invalid 'images': array too long. Expected an array with maximum length 16, but got an array with length 17 instead.",
    });
  });

  it('refuses bad bodies of the other endpoints too', () => {
    expect(checkRequestBody('/v1/embeddings', { model: 'm', input: 'x', dimensions: 0 })).toMatchObject({
      code: 'integer_below_min_value',
      param: 'dimensions',
    });
    expect(checkRequestBody('/v1/responses', { model: 'm', input: 'x', temperature: 3 })).toMatchObject({
      code: 'decimal_above_max_value',
      param: 'temperature',
    });
    expect(checkRequestBody('/v1/completions', { model: 'm', prompt: 'x', best_of: 100 })).toMatchObject({
      code: 'integer_above_max_value',
      param: 'best_of',
    });
    expect(checkRequestBody('/v1/moderations', { model: 'm', input: 5 })).toMatchObject({
      code: 'invalid_type',
      param: 'input',
    });
    expect(checkRequestBody('/v1/images/generations', { prompt: 'x', n: 11 })).toMatchObject({
      code: 'integer_above_max_value',
      param: 'n',
    });
    expect(checkRequestBody('/v1/embeddings', { input: 'x' })).toMatchObject({
      code: 'missing_required_parameter',
      param: 'model',
    });
  });

  it("refuses a strict json_schema format OpenAI's strict mode refuses, naming the schema's place, and takes the work's own", () => {
    const format = (schema: Record<string, unknown>, name = 'answer', strict = true) => ({
      type: 'json_schema',
      json_schema: { name, strict, schema },
    });
    const strictChat = (schema: Record<string, unknown>, name?: string, strict?: boolean) =>
      checkRequestBody('/v1/chat/completions', chat({ response_format: format(schema, name, strict) }));
    const good = {
      type: 'object',
      properties: {
        label: { type: 'string' },
        spans: {
          type: 'array',
          items: {
            type: 'object',
            properties: { at: { type: 'integer' } },
            required: ['at'],
            additionalProperties: false,
          },
        },
        note: { anyOf: [{ type: 'string' }, { type: 'null' }] },
      },
      required: ['label', 'spans', 'note'],
      additionalProperties: false,
    };
    expect(strictChat(good)).toBeUndefined();
    // The format outputSchema builds (through OpenAI's own helper) is taken.
    const built = structuredOutputOf(
      z.object({
        label: z.enum(['a', 'b']),
        why: z.string().nullable(),
        parts: z.array(z.object({ n: z.number() })),
      }),
      '/v1/chat/completions',
    );
    if (!('output' in built)) throw new Error(built.problem);
    expect(
      checkRequestBody('/v1/chat/completions', chat({ response_format: built.output.format })),
    ).toBeUndefined();

    const problem = (why: string) => ({
      code: 'invalid_json_schema',
      param: 'response_format',
      message: `Invalid schema for response_format 'answer': ${why}`,
    });
    expect(strictChat({ type: 'object', properties: { a: { type: 'string' } }, required: ['a'] })).toEqual(
      problem("In context=(), 'additionalProperties' is required to be supplied and to be false."),
    );
    expect(strictChat({ ...good, required: ['label', 'note'] })).toEqual(
      problem(
        "In context=(), 'required' is required to be supplied and to be an array including every key in properties. Missing 'spans'.",
      ),
    );
    const nested = structuredClone(good);
    delete (nested.properties.spans.items as Record<string, unknown>).additionalProperties;
    expect(strictChat(nested)).toEqual(
      problem(
        "In context=('properties', 'spans', 'items'), 'additionalProperties' is required to be supplied and to be false.",
      ),
    );
    expect(strictChat({ type: 'array', items: { type: 'string' } })).toEqual(
      problem(`schema must be a JSON Schema of 'type: "object"', got 'type: "array"'.`),
    );
    // Without strict, the schema is a hint: OpenAI takes it as it is.
    expect(
      strictChat({ type: 'object', properties: { a: { type: 'string' } } }, 'answer', false),
    ).toBeUndefined();
    // The name, strict or not.
    expect(strictChat(good, 'bad name!')).toMatchObject({
      code: 'invalid_value',
      param: 'response_format.json_schema.name',
    });
    expect(strictChat(good, 'n'.repeat(65), false)).toMatchObject({
      code: 'string_above_max_length',
      message:
        "Invalid 'response_format.json_schema.name': string too long. Expected a string with maximum length 64, but got a string with length 65 instead.",
    });
    // The responses API's text.format, the same rules.
    const responses = (schema: Record<string, unknown>) =>
      checkRequestBody('/v1/responses', {
        model: 'gpt-4o-mini',
        input: 'hi',
        text: { format: { type: 'json_schema', name: 'answer', strict: true, schema } },
      });
    expect(responses(good)).toBeUndefined();
    expect(
      responses({ type: 'object', properties: { a: { type: 'string' } }, additionalProperties: false }),
    ).toEqual({
      ...problem(
        "In context=(), 'required' is required to be supplied and to be an array including every key in properties. Missing 'a'.",
      ),
      param: 'text.format.schema',
    });
  });

  it("refuses JSON mode without the word json in what the model reads, in OpenAI's words", () => {
    const jsonMode = { response_format: { type: 'json_object' } };
    expect(checkRequestBody('/v1/chat/completions', chat(jsonMode))).toEqual({
      code: null,
      param: 'messages',
      message:
        "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
    });
    expect(
      checkRequestBody('/v1/chat/completions', {
        ...chat(jsonMode),
        messages: [{ role: 'user', content: 'Answer in JSON.' }],
      }),
    ).toBeUndefined();
    const responses = (input: string, instructions?: string) =>
      checkRequestBody('/v1/responses', {
        model: 'gpt-4o-mini',
        input,
        ...(instructions ? { instructions } : {}),
        text: { format: { type: 'json_object' } },
      });
    expect(responses('hi')).toMatchObject({ code: null, param: 'input' });
    expect(responses('hi', 'Reply with a json object.')).toBeUndefined();
    // Only text counts: an image's data that happens to hold the letters does not.
    const image = { type: 'image_url', image_url: { url: 'data:image/png;base64,AAjsonAA' } };
    expect(
      checkRequestBody('/v1/chat/completions', {
        ...chat(jsonMode),
        messages: [{ role: 'user', content: [{ type: 'text', text: 'describe it' }, image] }],
      }),
    ).toMatchObject({ param: 'messages' });
    expect(
      checkRequestBody('/v1/chat/completions', {
        ...chat(jsonMode),
        messages: [{ role: 'user', content: [{ type: 'text', text: 'describe it as JSON' }, image] }],
      }),
    ).toBeUndefined();
    // Going on from an earlier response, whose messages Prepare cannot see: left to OpenAI.
    expect(
      checkRequestBody('/v1/responses', {
        model: 'gpt-4o-mini',
        input: 'next one',
        previous_response_id: 'resp_1',
        text: { format: { type: 'json_object' } },
      }),
    ).toBeUndefined();
  });

  it('refuses an embeddings request whose input is an empty string, as OpenAI does', () => {
    const embed = (extra: Record<string, unknown>) =>
      checkRequestBody('/v1/embeddings', { model: 'text-embedding-3-small', input: 'text', ...extra });
    expect(embed({})).toBeUndefined();
    expect(embed({ input: '' })).toEqual({
      code: null,
      param: 'input',
      message:
        "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
    });
    expect(embed({ input: ['a', ''] })).toMatchObject({ param: 'input' });
    expect(embed({ input: [1, 2, 3] })).toBeUndefined();
  });

  it('leaves endpoints it has no schema for to OpenAI', () => {
    expect(checkRequestBody('/v1/unknown', { anything: [] })).toBeUndefined();
  });
});
