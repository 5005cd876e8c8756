import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { DatasetLine } from '../../functions/core/dataset';
import { IdRegistry } from '../../functions/core/ids';
import { errorItem } from '../../functions/core/items';
import { type BuildEvent, buildRequests } from '../../functions/core/requests';
import { defineWork, type WorkConfig } from '../../functions/core/work';
import { collect, fromArray } from '../support/streams';

const records = (...values: Record<string, unknown>[]): DatasetLine[] =>
  values.map((record, i) => ({ kind: 'record', line: i + 1, end: 0, record }));

async function build(config: Partial<WorkConfig>, lines: DatasetLine[]): Promise<BuildEvent[]> {
  const work = defineWork({ name: 'test', model: 'gpt-4o-mini', ...config } as WorkConfig);
  return collect(buildRequests(fromArray(lines), work, new IdRegistry()));
}

const bodies = (events: BuildEvent[]) =>
  events.map((e) =>
    e.kind === 'request' ? JSON.parse(e.request.json) : e.kind === 'error' ? e.error.code : 'skip',
  );

describe('buildRequests', () => {
  it('builds a chat request with custom_id, method, url and the default model', async () => {
    const events = await build(
      {},
      records({ id: 'r1', messages: [{ role: 'user', content: 'hi' }], temperature: 0 }),
    );
    expect(bodies(events)).toEqual([
      {
        custom_id: 'r1',
        method: 'POST',
        url: '/v1/chat/completions',
        body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], temperature: 0 },
      },
    ]);
    const [event] = events;
    expect(event?.kind === 'request' && event.request).toMatchObject({
      customId: 'r1',
      model: 'gpt-4o-mini',
      line: 1,
      inputs: 1,
      bytes: Buffer.byteLength(event?.kind === 'request' ? event.request.json : '') + 1,
    });
  });

  it.each([
    ['/v1/embeddings', { id: 1, input: ['a', 'b', 'c'] }, { model: 'm', input: ['a', 'b', 'c'] }, 3],
    ['/v1/responses', { id: 1, input: 'hello' }, { model: 'm', input: 'hello' }, 1],
    ['/v1/completions', { id: 1, prompt: 'once' }, { model: 'm', prompt: 'once' }, 1],
    ['/v1/moderations', { id: 1, input: 'text' }, { model: 'm', input: 'text' }, 1],
  ] as const)('builds %s requests from their main field', async (endpoint, item, body, inputs) => {
    const events = await build({ endpoint, model: 'm' }, records(item));
    expect(bodies(events)).toEqual([{ custom_id: '1', method: 'POST', url: endpoint, body }]);
    expect(events[0]?.kind === 'request' && events[0].request.inputs).toBe(inputs);
  });

  it('sends a raw body as is, adding only the default model', async () => {
    const events = await build(
      {},
      records(
        { id: 'x', body: { messages: [{ role: 'user', content: 'q' }], n: 2 } },
        { id: 'y', body: { model: 'o1', messages: [{ role: 'user', content: 'q' }] } },
      ),
    );
    expect(bodies(events).map((b) => b.body)).toEqual([
      { messages: [{ role: 'user', content: 'q' }], n: 2, model: 'gpt-4o-mini' },
      { model: 'o1', messages: [{ role: 'user', content: 'q' }] },
    ]);
  });

  it('applies the upload hook: one item, several, or nothing to skip', async () => {
    const events = await build(
      {
        upload: (record: Record<string, unknown>) => {
          const n = Number(record.n);
          return Array.from({ length: n }, (_, i) => ({
            id: `${record.id}-${i}`,
            messages: [{ role: 'user', content: 'q' }],
          }));
        },
      },
      records({ id: 'a', n: 2 }, { id: 'b', n: 0 }, { id: 'c', n: 1 }),
    );
    expect(events.map((e) => (e.kind === 'request' ? [e.request.customId, e.first] : e.kind))).toEqual([
      ['a-0', true],
      ['a-1', false],
      'skip',
      ['c-0', true],
    ]);
  });

  it('refuses each bad item with a message naming its line and reason, and goes on', async () => {
    const events = await build(
      { maxBytesPerBatch: 2000 },
      records(
        { id: 'ok', messages: [{ role: 'user', content: 'fine' }] },
        { messages: [{ role: 'user', content: 'no id' }] },
        { id: 'ok', messages: [{ role: 'user', content: 'again' }] },
        { id: 'big', messages: [{ role: 'user', content: 'x'.repeat(3000) }] },
        { id: 'nomsg' },
        { id: 'wrong', input: 'embeddings field' },
        { id: 'stream', messages: [{ role: 'user', content: 'x' }], stream: true },
        { id: '', messages: [{ role: 'user', content: 'x' }] },
        { id: 'last', messages: [{ role: 'user', content: 'y' }] },
      ),
    );
    const outcome = events.map((e) =>
      e.kind === 'error' ? [e.error.line, e.error.code, e.error.message] : e.kind,
    );
    expect(outcome).toEqual([
      'request',
      [
        2,
        'invalid_item',
        'line 2: the upload hook returned an invalid item: id: must be a non-empty string or an integer',
      ],
      [3, 'duplicate_id', 'line 3: id "ok" was already used on line 1; ids must be unique within a run'],
      [4, 'request_too_large', 'line 4: request "big" is 3138 bytes, over maxBytesPerBatch (2000)'],
      [
        5,
        'invalid_item',
        'line 5: request "nomsg" has no "messages", which /v1/chat/completions needs (or give a raw "body")',
      ],
      [
        6,
        'invalid_item',
        'line 6: "input" does not apply to /v1/chat/completions; give "messages" (or a raw "body")',
      ],
      [7, 'streaming_unsupported', 'line 7: "stream: true" is not supported by the Batch API'],
      [8, 'invalid_item', 'line 8: the upload hook returned an invalid item: id: must not be empty'],
      'request',
    ]);
  });

  it('refuses a request with no model anywhere', async () => {
    const events = await build(
      { model: undefined },
      records({ id: 'a', messages: [{ role: 'user', content: 'q' }] }),
    );
    expect(events[0]?.kind === 'error' && events[0].error.message).toBe(
      'line 1: request "a" has no model: set `model` in the work or in the item',
    );
  });

  it('refuses an embeddings request with more inputs than a batch may hold', async () => {
    const events = await build(
      { endpoint: '/v1/embeddings', maxEmbeddingInputsPerBatch: 2 },
      records({ id: 'e', input: ['a', 'b', 'c'] }),
    );
    expect(events[0]?.kind === 'error' && events[0].error.code).toBe('too_many_inputs');
  });

  it('counts embedding inputs: a string or one token array is one input, an array of strings or of token arrays one each', async () => {
    const events = await build(
      { endpoint: '/v1/embeddings', model: 'text-embedding-3-small', maxEmbeddingInputsPerBatch: 2 },
      records(
        { id: 'text', input: 'hello' },
        { id: 'tokens', input: [1, 2, 3, 4, 5] },
        { id: 'two-token-arrays', input: [[1, 2], [3]] },
        { id: 'two-texts', input: ['a', 'b'] },
        { id: 'three-token-arrays', input: [[1], [2], [3]] },
      ),
    );
    expect(
      events.map((e) =>
        e.kind === 'request'
          ? [e.request.customId, e.request.inputs, e.request.estimatedTokens]
          : e.kind === 'error'
            ? e.error.code
            : e.kind,
      ),
    ).toEqual([
      ['text', 1, 2],
      ['tokens', 1, 5],
      ['two-token-arrays', 2, 3],
      ['two-texts', 2, 1],
      'too_many_inputs',
    ]);
  });

  it('turns an item JSON cannot hold (a BigInt, a cycle) into an error for that request only', async () => {
    const events = await build(
      {
        upload: (record: Record<string, unknown>) => {
          const item: Record<string, unknown> = {
            id: String(record.id),
            messages: [{ role: 'user', content: 'q' }],
          };
          if (record.id === 'big') item.seed = 12n;
          if (record.id === 'cycle') item.metadata = item;
          return item as { id: string };
        },
      },
      records({ id: 'a' }, { id: 'big' }, { id: 'cycle' }, { id: 'd' }),
    );
    expect(
      events.map((e) =>
        e.kind === 'error' ? [e.error.id, e.error.line, e.error.code, e.error.message, e.record] : e.kind,
      ),
    ).toEqual([
      'request',
      [
        'big',
        2,
        'upload_hook_failed',
        'line 2: the upload hook returned a value JSON cannot hold: Do not know how to serialize a BigInt',
        true,
      ],
      [
        'cycle',
        3,
        'upload_hook_failed',
        expect.stringMatching(
          /^line 3: the upload hook returned a value JSON cannot hold: Converting circular/,
        ),
        true,
      ],
      'request',
    ]);
  });

  it('turns a hook that throws into an error for that record only', async () => {
    const events = await build(
      {
        upload: (record: Record<string, unknown>) => {
          if (record.id === 'boom') throw new Error('cannot handle this one');
          return { id: String(record.id), messages: [{ role: 'user', content: 'q' }] };
        },
      },
      records({ id: 'a' }, { id: 'boom' }, { id: 'c' }),
    );
    expect(events.map((e) => (e.kind === 'error' ? e.error : e.kind))).toEqual([
      'request',
      expect.objectContaining({
        stage: 'upload',
        code: 'upload_hook_failed',
        line: 2,
        message: 'line 2: the upload hook threw: cannot handle this one',
      }),
      'request',
    ]);
  });

  it('turns an item that cannot be read, an id cut inside a character, or a body with a cycle behind toJSON into an error for that record only', async () => {
    class Lazy {
      id = 'lazy';
      get messages(): unknown[] {
        throw new Error('lazy field not loaded');
      }
    }
    const looped: Record<string, unknown> = { text: 'x' };
    looped.self = looped;
    looped.again = looped; // two ways round the cycle: a walk without a bound never ends
    const cyclicContent = { toJSON: () => 'shown as text', inner: looped };
    const events = await build(
      {
        upload: (record: Record<string, unknown>) => {
          if (record.id === 'lazy') return new Lazy() as unknown as { id: string };
          if (record.id === 'cut')
            return { id: '😀 smile'.slice(1), messages: [{ role: 'user', content: 'q' }] };
          if (record.id === 'pair') {
            const pair: unknown[] = [{ id: 'pair-1', messages: [{ role: 'user', content: 'q' }] }];
            Object.defineProperty(pair, 1, {
              get: () => {
                throw new Error('second item not loaded');
              },
              enumerable: true,
            });
            return pair as { id: string }[];
          }
          if (record.id === 'loop')
            return { id: 'loop', messages: [{ role: 'user', content: 'q', note: cyclicContent }] };
          return { id: String(record.id), messages: [{ role: 'user', content: 'q' }] };
        },
      },
      records({ id: 'a' }, { id: 'lazy' }, { id: 'cut' }, { id: 'loop' }, { id: 'e' }, { id: 'pair' }),
    );
    expect(
      events.map((e) =>
        e.kind === 'error' ? `${e.error.line} ${e.error.code}: ${e.error.message}` : e.kind,
      ),
    ).toEqual([
      'request',
      '2 upload_hook_failed: line 2: the upload hook returned an item that could not be read: lazy field not loaded',
      expect.stringMatching(
        /^3 invalid_item: line 3: the upload hook returned an invalid item: .*id.*half of a character/,
      ),
      'request',
      'request',
      'request',
      '6 upload_hook_failed: line 6: the upload hook returned an item that could not be read: second item not loaded',
    ]);
    const loop = events[3];
    expect(loop?.kind === 'request' && JSON.parse(loop.request.json).body.messages[0].note).toBe(
      'shown as text',
    );
  });

  it('checks a body as it is sent: a Date is the string JSON writes, not an object OpenAI would refuse', async () => {
    const events = await build(
      {},
      records({ id: 'dated', messages: [{ role: 'user', content: 'q' }], metadata: { at: new Date(0) } }),
    );
    expect(bodies(events)).toEqual([
      expect.objectContaining({
        body: expect.objectContaining({ metadata: { at: '1970-01-01T00:00:00.000Z' } }),
      }),
    ]);
  });

  it('checks records against the work schema, naming the field but not its value', async () => {
    const events = await build(
      {
        record: z.object({ id: z.string(), content: z.string() }),
        upload: (r: { id: string; content: string }) => ({
          id: r.id,
          messages: [{ role: 'user', content: r.content }],
        }),
      } as unknown as Partial<WorkConfig>,
      records({ id: 'a', content: 'fine' }, { id: 'b', content: 42 }),
    );
    expect(events[1]?.kind === 'error' && events[1].error.message).toBe(
      "line 2 does not match the work's record schema: content: Invalid input: expected string, received number",
    );
  });

  it('passes invalid dataset lines through as record errors', async () => {
    const error = errorItem({ stage: 'dataset', code: 'invalid_json', message: 'bad', line: 1 });
    const events = await build({}, [{ kind: 'invalid', line: 1, end: 4, error }]);
    expect(events).toEqual([{ kind: 'error', error, record: true }]);
  });

  it('refuses at prepare, naming the param and the rule, a body OpenAI would refuse; unknown params pass', async () => {
    const q = [{ role: 'user', content: 'q' }];
    const events = await build(
      {},
      records(
        { id: 'ok', messages: q, temperature: 1, brand_new_param: { any: 'thing' } },
        { id: 'tools', messages: q, tools: [] },
        { id: 'hot', messages: q, temperature: 9 },
        { id: 'many', messages: q, max_completion_tokens: 'many' },
      ),
    );
    expect(
      events.map((e) =>
        e.kind === 'error' ? [e.error.id, e.error.stage, e.error.code, e.error.message] : e.kind,
      ),
    ).toEqual([
      'request',
      [
        'tools',
        'request',
        'invalid_request_body',
        `line 2: request "tools" would be refused by OpenAI (empty_array, param 'tools'): Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty array instead.`,
      ],
      [
        'hot',
        'request',
        'invalid_request_body',
        `line 3: request "hot" would be refused by OpenAI (decimal_above_max_value, param 'temperature'): Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 9 instead.`,
      ],
      [
        'many',
        'request',
        'invalid_request_body',
        `line 4: request "many" would be refused by OpenAI (invalid_type, param 'max_completion_tokens'): Invalid type for 'max_completion_tokens': expected an integer, but got a string instead.`,
      ],
    ]);
    expect(events[1]?.kind === 'error' && events[1].error.response).toEqual({
      error: {
        message:
          "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        type: 'invalid_request_error',
        param: 'tools',
        code: 'empty_array',
      },
    });
  });

  it('sends every body as is when validateRequests is off', async () => {
    const events = await build(
      { validateRequests: false },
      records({ id: 'tools', messages: [{ role: 'user', content: 'q' }], tools: [] }),
    );
    expect(bodies(events)).toMatchObject([{ custom_id: 'tools', body: { tools: [] } }]);
  });
});
