import type OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { BatchOutputItem, Endpoint } from '../../../functions/core/items';
import { ResultLineSchema, resultOf } from '../../../functions/core/results';
import { checkOutput, type StructuredOutput } from '../../../functions/core/structured';
import { defineWork } from '../../../functions/core/work';
import { ManualClock } from '../../../local/emulator/clock';
import { type Emulator, startEmulator } from '../../../local/emulator/server';
import { matchingValue, OUTPUT_MARKERS } from '../../../local/emulator/structured';
import { clientFor, fileLines, uploadLines } from '../../support/emulator';
import { openapiValidator } from '../../support/openapi';

/**
 * The emulator's structured answers: JSON that matches the request's json_schema (checked by the work's
 * own zod schema and by OpenAI's response schema), the same for a seed, and each output marker turned
 * into the failure the core reads back with its code.
 */

const validate = openapiValidator();

const Item = z.object({ name: z.string().min(2).max(12), qty: z.number().int().min(1).max(9) });
const Answer = z.object({
  label: z.enum(['positive', 'negative', 'neutral']),
  score: z.number().min(0).max(1),
  note: z.string().nullable(),
  items: z.array(Item).min(1).max(4),
  kind: z.literal('review'),
  when: z.iso.datetime(),
  day: z.iso.date(),
  email: z.email(),
  id: z.uuid(),
  extra: z.union([
    z.object({ t: z.literal('a'), n: z.number().gt(0).lt(1) }),
    z.object({ t: z.literal('b') }),
  ]),
  ok: z.boolean(),
});

const structured = (endpoint: Endpoint): StructuredOutput => {
  const output = defineWork({ name: 't', endpoint, outputSchema: Answer }).structured;
  if (!output) throw new Error('no structured output');
  return output;
};

let clock: ManualClock;
const emulators: Emulator[] = [];
async function emulator(seed: number): Promise<{ emulator: Emulator; client: OpenAI }> {
  const started = await startEmulator({ clock, tickMs: 0, validationMs: 1000, finalizingMs: 0, seed });
  emulators.push(started);
  return { emulator: started, client: clientFor(started, { maxRetries: 0 }) };
}
beforeAll(() => {
  clock = new ManualClock(Date.UTC(2026, 10, 25));
});
afterAll(async () => {
  for (const started of emulators) await started.stop();
});

const bodyOf = (endpoint: Endpoint, content: string): Record<string, unknown> => {
  const format = structured(endpoint).format;
  return endpoint === '/v1/responses'
    ? { model: 'gpt-4o-mini', input: content, text: { format } }
    : { model: 'gpt-4o-mini', messages: [{ role: 'user', content }], response_format: format };
};

/** Runs one batch to its end and gives each output line as the core reads it. */
async function answers(
  seed: number,
  endpoint: Endpoint,
  contents: string[],
  body: (endpoint: Endpoint, content: string) => Record<string, unknown> = bodyOf,
): Promise<BatchOutputItem[]> {
  const { emulator: started, client } = await emulator(seed);
  const lines = contents.map((content, i) =>
    JSON.stringify({ custom_id: `r${i}`, method: 'POST', url: endpoint, body: body(endpoint, content) }),
  );
  const file = await uploadLines(client, lines);
  const created = await client.batches.create({ input_file_id: file.id, endpoint, completion_window: '24h' });
  for (let i = 0; i < 3; i++) {
    clock.advance(1000);
    await started.settle();
  }
  const batch = await client.batches.retrieve(created.id);
  expect(batch.status).toBe('completed');
  const items: BatchOutputItem[] = [];
  for (const line of await fileLines(client, batch.output_file_id)) {
    const event = resultOf(ResultLineSchema.parse(line), batch.id, null);
    if (event.kind !== 'output') throw new Error(`not an output: ${JSON.stringify(line)}`);
    items.push(event.item);
  }
  return items.sort((a, b) => Number(a.id.slice(1)) - Number(b.id.slice(1)));
}

describe.each(['/v1/chat/completions', '/v1/responses'] as const)('structured answers on %s', (endpoint) => {
  const schema = endpoint === '/v1/responses' ? 'Response' : 'CreateChatCompletionResponse';

  it('answers JSON that matches the schema, valid as OpenAI answers, the same for a seed', async () => {
    const contents = Array.from({ length: 30 }, (_, i) => `review ${i}`);
    const first = await answers(7, endpoint, contents);
    expect(first).toHaveLength(30);
    for (const item of first) {
      validate(schema, item.response);
      const checked = checkOutput(structured(endpoint), item, null);
      expect('item' in checked && checked.item.parsed).toEqual(JSON.parse(item.content ?? ''));
      expect(item.usage?.outputTokens).toBeGreaterThan(0);
    }
    // Answers vary across records, so the generator is not one fixed value.
    expect(new Set(first.map((item) => item.content)).size).toBeGreaterThan(20);
    const again = await answers(7, endpoint, contents);
    expect(again.map((item) => item.content)).toEqual(first.map((item) => item.content));
    const other = await answers(8, endpoint, contents);
    expect(other.map((item) => item.content)).not.toEqual(first.map((item) => item.content));
  });

  it('answers JSON mode (a json_object format) with a JSON object', async () => {
    const jsonMode = (at: Endpoint, content: string): Record<string, unknown> =>
      at === '/v1/responses'
        ? { model: 'gpt-4o-mini', input: content, text: { format: { type: 'json_object' } } }
        : {
            model: 'gpt-4o-mini',
            messages: [{ role: 'user', content }],
            response_format: { type: 'json_object' },
          };
    const items = await answers(3, endpoint, ['reply in JSON: a', 'reply in json: b'], jsonMode);
    for (const item of items) {
      validate(schema, item.response);
      const parsed: unknown = JSON.parse(item.content ?? '');
      expect(typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)).toBe(true);
    }
  });

  it("cuts the JSON at the request's output token limit, and only then", async () => {
    const limited = (max: number) => (at: Endpoint, content: string) => ({
      ...bodyOf(at, content),
      ...(at === '/v1/responses' ? { max_output_tokens: max } : { max_completion_tokens: max }),
    });
    const roomy = await answers(5, endpoint, ['a review', 'another review'], limited(4000));
    for (const item of roomy) {
      validate(schema, item.response);
      expect('item' in checkOutput(structured(endpoint), item, null)).toBe(true);
    }
    const tight = await answers(5, endpoint, ['a review', 'another review'], limited(16));
    for (const item of tight) {
      validate(schema, item.response);
      const checked = checkOutput(structured(endpoint), item, null);
      expect('error' in checked && checked.error.code).toBe('output_truncated');
      expect(item.usage?.outputTokens).toBe(16); // cut at the limit, billed up to it
    }
    // Chat has no max_output_tokens: a chat request that sets it is not cut.
    if (endpoint === '/v1/chat/completions') {
      const other = await answers(5, endpoint, ['a review'], (at, content) => ({
        ...bodyOf(at, content),
        max_output_tokens: 16,
      }));
      for (const item of other) expect('item' in checkOutput(structured(endpoint), item, null)).toBe(true);
    }
  });

  it('structures every answer of a request and bills them all, and a refusal at a limit still ends', async () => {
    if (endpoint !== '/v1/chat/completions') return; // n is chat's
    const three = (at: Endpoint, content: string) => ({ ...bodyOf(at, content), n: 3 });
    const [item] = await answers(6, endpoint, ['a review'], three);
    if (!item) throw new Error('no answer');
    validate(schema, item.response);
    const choices = item.response.choices as { message: { content: string }; finish_reason: string }[];
    expect(choices).toHaveLength(3);
    let tokens = 0;
    for (const choice of choices) {
      Answer.parse(JSON.parse(choice.message.content));
      expect(choice.finish_reason).toBe('stop');
      tokens += Math.ceil(choice.message.content.length / 4);
    }
    expect(item.usage?.outputTokens).toBe(tokens);
  });

  it('answers each marker with the failure the core reads back by its code', async () => {
    const items = await answers(3, endpoint, [
      `fine ${OUTPUT_MARKERS.invalidJson}`,
      `fine ${OUTPUT_MARKERS.wrongShape}`,
      `fine ${OUTPUT_MARKERS.refusal}`,
      `fine ${OUTPUT_MARKERS.truncated}`,
      'fine',
    ]);
    const codes = items.map((item) => {
      validate(schema, item.response);
      const checked = checkOutput(structured(endpoint), item, null);
      return 'error' in checked ? checked.error.code : 'ok';
    });
    expect(codes).toEqual(['invalid_output', 'invalid_output', 'refusal', 'output_truncated', 'ok']);
  });
});

describe('invalid-json-once', () => {
  it('answers not-JSON the first time an emulator sees the request, good JSON after', async () => {
    const content = `again ${OUTPUT_MARKERS.invalidJsonOnce}`;
    const { emulator: started, client } = await emulator(4);
    const outcome = async () => {
      const line = JSON.stringify({
        custom_id: 'r0',
        method: 'POST',
        url: '/v1/chat/completions',
        body: bodyOf('/v1/chat/completions', content),
      });
      const file = await uploadLines(client, [line]);
      const created = await client.batches.create({
        input_file_id: file.id,
        endpoint: '/v1/chat/completions',
        completion_window: '24h',
      });
      for (let i = 0; i < 3; i++) {
        clock.advance(1000);
        await started.settle();
      }
      const batch = await client.batches.retrieve(created.id);
      const [result] = await fileLines(client, batch.output_file_id);
      const event = resultOf(ResultLineSchema.parse(result), batch.id, null);
      if (event.kind !== 'output') throw new Error('not an output');
      const checked = checkOutput(structured('/v1/chat/completions'), event.item, null);
      return 'error' in checked ? checked.error.code : 'ok';
    };
    expect(await outcome()).toBe('invalid_output');
    expect(await outcome()).toBe('ok');
  });
});

describe('matchingValue', () => {
  it('follows $ref and stops recursion at a nullable branch', () => {
    const root = {
      type: 'object',
      properties: { tree: { $ref: '#/definitions/node' } },
      required: ['tree'],
      additionalProperties: false,
      definitions: {
        node: {
          type: 'object',
          properties: {
            value: { type: 'integer', minimum: 1, maximum: 3 },
            child: { anyOf: [{ $ref: '#/definitions/node' }, { type: 'null' }] },
          },
          required: ['value', 'child'],
          additionalProperties: false,
        },
      },
    };
    const Node: z.ZodType = z.lazy(() =>
      z.object({ value: z.number().int().min(1).max(3), child: Node.nullable() }),
    );
    for (let key = 0; key < 50; key++) {
      const value = matchingValue(root, root, 1, `k${key}`, 0);
      expect(z.object({ tree: Node }).safeParse(value).success).toBe(true);
    }
  });
});
