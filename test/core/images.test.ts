import { describe, expect, it } from 'vitest';
import { collectPart } from '../../functions/core/collect';
import type { DatasetLine } from '../../functions/core/dataset';
import { IdRegistry } from '../../functions/core/ids';
import { imageExtension, imageName, withStoredImages } from '../../functions/core/images';
import type { BatchOutputItem } from '../../functions/core/items';
import { buildRequests } from '../../functions/core/requests';
import { newPart } from '../../functions/core/run';
import { defineWork, type WorkConfig } from '../../functions/core/work';
import { pngOf } from '../../local/emulator/png';
import { chunksOf, collect, fromArray } from '../support/streams';

const png = pngOf(4, 3, 1);
const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 0x10]);

/** A sink that keeps what it is given, as the step's BlobStore would under runs/<id>/images/. */
function memorySink() {
  const objects = new Map<string, Buffer>();
  return {
    objects,
    write: async (name: string, bytes: Uint8Array) => {
      const key = `runs/r/images/${name}`;
      objects.set(key, Buffer.from(bytes));
      return key;
    },
  };
}

const imagesItem = (id: string, data: unknown[], extra: Record<string, unknown> = {}): BatchOutputItem => ({
  id,
  status: 'success',
  statusCode: 200,
  requestId: 'req',
  batchId: 'batch_1',
  model: 'gpt-image-1',
  content: null,
  embedding: null,
  usage: null,
  response: { created: 1, data, ...extra },
});

describe('the endpoint setting and requests', () => {
  it.each(['/v1/images/generations', '/v1/images/edits', '/v1/videos'] as const)('accepts %s', (endpoint) => {
    expect(defineWork({ name: 'w', endpoint }).settings.endpoint).toBe(endpoint);
  });

  const build = async (config: Partial<WorkConfig>, ...items: Record<string, unknown>[]) => {
    const work = defineWork({ name: 'w', model: 'gpt-image-1', ...config } as WorkConfig);
    const lines: DatasetLine[] = items.map((record, i) => ({ kind: 'record', line: i + 1, end: 0, record }));
    const events = await collect(buildRequests(fromArray(lines), work, new IdRegistry()));
    return events.map((e) =>
      e.kind === 'request' ? JSON.parse(e.request.json) : e.kind === 'error' ? e.error.message : 'skip',
    );
  };

  it('builds image and video requests from their prompt, with the other parameters', async () => {
    expect(
      await build(
        { endpoint: '/v1/images/generations' },
        { id: 'a', prompt: 'a fox', size: '1024x1024', n: 2 },
      ),
    ).toEqual([
      {
        custom_id: 'a',
        method: 'POST',
        url: '/v1/images/generations',
        body: { model: 'gpt-image-1', prompt: 'a fox', size: '1024x1024', n: 2 },
      },
    ]);
    const images = [{ image_url: 'https://example.com/a.png' }];
    expect(await build({ endpoint: '/v1/images/edits' }, { id: 'e', prompt: 'add a hat', images })).toEqual([
      {
        custom_id: 'e',
        method: 'POST',
        url: '/v1/images/edits',
        body: { model: 'gpt-image-1', prompt: 'add a hat', images },
      },
    ]);
    expect(
      await build({ endpoint: '/v1/videos', model: 'sora-2' }, { id: 'v', prompt: 'waves', seconds: '8' }),
    ).toEqual([
      {
        custom_id: 'v',
        method: 'POST',
        url: '/v1/videos',
        body: { model: 'sora-2', prompt: 'waves', seconds: '8' },
      },
    ]);
  });

  it('refuses what OpenAI would refuse: another main field, too many images, an edit without images', async () => {
    const [messages, many, bare] = await build(
      { endpoint: '/v1/images/edits' },
      { id: 'm', messages: [{ role: 'user', content: 'x' }] },
      { id: 'n', prompt: 'x', images: [{ file_id: 'f' }], n: 11 },
      { id: 'b', prompt: 'x' },
    );
    expect(messages).toMatch(/"messages" does not apply to \/v1\/images\/edits; give "prompt"/);
    expect(many).toMatch(/integer_above_max_value, param 'n'/);
    expect(bare).toMatch(/missing_required_parameter, param 'images'/);
  });
});

describe('imageName', () => {
  it('names the n-th image by custom_id, safe for a key and a file name', () => {
    expect(imageName('r-1', 0, 'png')).toBe('r-1-0.png');
    expect(imageName('a/b c', 2, 'png')).toBe('a%2Fb%20c-2.png');
    expect(imageName("it's(1)*!~", 0, 'png')).toBe('it%27s%281%29%2A%21%7E-0.png');
  });

  it('shortens a long custom_id, told apart from others by its hash', () => {
    const [a, b] = [`${'x'.repeat(500)}a`, `${'x'.repeat(500)}b`].map((id) => imageName(id, 0, 'png'));
    expect(a?.length).toBeLessThan(130);
    expect(a).not.toBe(b);
  });
});

describe('withStoredImages', () => {
  it('stores each b64_json image and puts its key in its place, keeping the revised prompt', async () => {
    const sink = memorySink();
    const item = imagesItem('r1', [
      { b64_json: png.toString('base64'), revised_prompt: 'a red fox' },
      { b64_json: jpeg.toString('base64') },
      { url: 'https://example.com/x.png' },
    ]);
    const stored = await withStoredImages(item, sink);
    expect(stored.images).toEqual([
      { key: 'runs/r/images/r1-0.png', index: 0, revisedPrompt: 'a red fox' },
      { key: 'runs/r/images/r1-1.jpeg', index: 1, revisedPrompt: null },
    ]);
    expect(stored.response.data).toEqual([
      { key: 'runs/r/images/r1-0.png', revised_prompt: 'a red fox' },
      { key: 'runs/r/images/r1-1.jpeg' },
      { url: 'https://example.com/x.png' },
    ]);
    expect(JSON.stringify(stored)).not.toContain('b64_json');
    expect(sink.objects.get('runs/r/images/r1-0.png')?.equals(png)).toBe(true);
    expect(item.response.data).toHaveLength(3); // the answer given is not changed
  });

  it('tells the format by the bytes, else by output_format', () => {
    expect(imageExtension(png, 'jpeg')).toBe('png');
    expect(imageExtension(jpeg, undefined)).toBe('jpeg');
    expect(imageExtension(Buffer.from('RIFF\0\0\0\0WEBPVP8 '), undefined)).toBe('webp');
    expect(imageExtension(Buffer.from('??'), 'webp')).toBe('webp');
    expect(imageExtension(Buffer.from('??'), undefined)).toBe('png');
  });
});

describe('collectPart with an images work', () => {
  it('writes outputs that hold the keys of the stored images, and no base64', async () => {
    const ids = ['p', 'q'];
    const result = (id: string, count: number) =>
      JSON.stringify({
        id: `br_${id}`,
        custom_id: id,
        response: {
          status_code: 200,
          request_id: 'req',
          body: {
            created: 1,
            data: Array.from({ length: count }, (_, i) => ({ b64_json: pngOf(2, 2, i).toString('base64') })),
            usage: { input_tokens: 5, output_tokens: 272, total_tokens: 277, input_tokens_details: {} },
          },
        },
        error: null,
      });
    const sink = memorySink();
    const outputs: Record<string, unknown>[] = [];
    const request = (id: string) =>
      JSON.stringify({ custom_id: id, method: 'POST', url: '/v1/images/generations', body: {} });
    const collected = await collectPart({
      work: defineWork({ name: 'w', endpoint: '/v1/images/generations' }),
      part: { ...newPart({ part: 0, generation: 0, model: 'm', requests: 2, bytes: 0, estimatedTokens: 0 }) },
      requests: () => chunksOf(ids.map(request).join('\n')),
      lines: () => chunksOf('1\n2'),
      outputFile: () => chunksOf([result('p', 2), result('q', 1)].join('\n'), 40),
      errorFile: null,
      outputs: { write: async (line) => void outputs.push(JSON.parse(line)) },
      errors: { write: async () => undefined },
      resubmit: null,
      images: sink,
    });
    expect(collected).toMatchObject({ outputs: 2, errors: 0, usage: { outputTokens: 544 } });
    expect([...sink.objects.keys()].sort()).toEqual([
      'runs/r/images/p-0.png',
      'runs/r/images/p-1.png',
      'runs/r/images/q-0.png',
    ]);
    expect(outputs.map((o) => o.images)).toEqual([
      [
        { key: 'runs/r/images/p-0.png', index: 0, revisedPrompt: null },
        { key: 'runs/r/images/p-1.png', index: 1, revisedPrompt: null },
      ],
      [{ key: 'runs/r/images/q-0.png', index: 0, revisedPrompt: null }],
    ]);
    expect(JSON.stringify(outputs)).not.toContain('b64_json');
  });
});
