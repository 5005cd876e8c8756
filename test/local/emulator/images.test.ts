import { inflateSync, crc32 as zlibCrc32 } from 'node:zlib';
import type OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../local/emulator/clock';
import { crc32, dimensionsOf, pngOf } from '../../../local/emulator/png';
import { type Emulator, startEmulator } from '../../../local/emulator/server';
import { clientFor, fileLines, uploadLines } from '../../support/emulator';
import { openapiValidator } from '../../support/openapi';

/**
 * The image and video endpoints through the official `openai` client: a batch is created for each, and
 * answered with spec-valid bodies whose `b64_json` decodes to a real PNG of the requested size.
 */

const validate = openapiValidator();

/** Reads a PNG's chunks, checking the signature and every CRC; gives IHDR's fields and the inflated pixels. */
function readPng(bytes: Buffer) {
  expect([...bytes.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const chunks: { type: string; data: Buffer }[] = [];
  for (let at = 8; at < bytes.length; ) {
    const length = bytes.readUInt32BE(at);
    const type = bytes.toString('ascii', at + 4, at + 8);
    const data = bytes.subarray(at + 8, at + 8 + length);
    expect(bytes.readUInt32BE(at + 8 + length), `CRC of ${type}`).toBe(
      zlibCrc32(bytes.subarray(at + 4, at + 8 + length)),
    );
    chunks.push({ type, data });
    at += 12 + length;
  }
  expect(chunks.map((c) => c.type)).toEqual(['IHDR', 'IDAT', 'IEND']);
  const ihdr = chunks[0]?.data ?? Buffer.alloc(13);
  const [width, height] = [ihdr.readUInt32BE(0), ihdr.readUInt32BE(4)];
  const pixels = inflateSync(chunks[1]?.data ?? Buffer.alloc(0));
  return { width, height, bitDepth: ihdr[8], colourType: ihdr[9], pixels };
}

describe('png', () => {
  it('computes the CRC-32 PNG uses', () => {
    for (const text of ['', 'IEND', 'a longer run of bytes, 0123456789'])
      expect(crc32(Buffer.from(text))).toBe(zlibCrc32(Buffer.from(text)));
  });

  it('draws a valid PNG of the size asked, the same bytes for the same seed', () => {
    const png = readPng(pngOf(30, 20, 7));
    expect(png).toMatchObject({ width: 30, height: 20, bitDepth: 8, colourType: 2 });
    expect(png.pixels.length).toBe((1 + 30 * 3) * 20);
    expect(pngOf(30, 20, 7).equals(pngOf(30, 20, 7))).toBe(true);
    expect(pngOf(30, 20, 7).equals(pngOf(30, 20, 8))).toBe(false);
  });

  it('draws the small fixed size for auto, none, or a size too large to draw cheaply', () => {
    expect(dimensionsOf('1536x1024')).toEqual({ width: 1536, height: 1024 });
    for (const size of ['auto', undefined, '9000x9000', 'big'])
      expect(dimensionsOf(size)).toEqual({ width: 64, height: 64 });
  });
});

let clock: ManualClock;
let emulator: Emulator;
let client: OpenAI;
beforeAll(async () => {
  clock = new ManualClock(Date.UTC(2026, 10, 26));
  emulator = await startEmulator({ clock, tickMs: 0, validationMs: 1000, finalizingMs: 0, seed: 11 });
  client = clientFor(emulator, { maxRetries: 0 });
});
afterAll(() => emulator.stop());

async function run(endpoint: OpenAI.BatchCreateParams['endpoint'], bodies: Record<string, object>) {
  const lines = Object.entries(bodies).map(([id, body]) =>
    JSON.stringify({ custom_id: id, method: 'POST', url: endpoint, body }),
  );
  const file = await uploadLines(client, lines);
  const created = await client.batches.create({ input_file_id: file.id, endpoint, completion_window: '24h' });
  expect(created.endpoint).toBe(endpoint);
  for (let i = 0; i < 3; i++) {
    clock.advance(1000);
    await emulator.settle();
  }
  const batch = await client.batches.retrieve(created.id);
  validate('Batch', batch);
  const outputs = Object.fromEntries(
    (await fileLines(client, batch.output_file_id)).map((l) => [
      l.custom_id as string,
      (l.response as { body: unknown }).body,
    ]),
  );
  return { batch, outputs };
}

describe('the image and video endpoints, through the official client', () => {
  it('answers image generations with n PNGs of the requested size, and token usage', async () => {
    const { batch, outputs } = await run('/v1/images/generations', {
      fox: { model: 'gpt-image-1', prompt: 'a red fox', size: '1536x1024', quality: 'low', n: 2 },
      owl: { model: 'gpt-image-1', prompt: 'an owl' },
    });
    expect(batch.status).toBe('completed');
    expect(batch.request_counts).toEqual({ total: 2, completed: 2, failed: 0 });
    const fox = outputs.fox as OpenAI.ImagesResponse;
    validate('ImagesResponse', fox);
    expect(fox).toMatchObject({ size: '1536x1024', quality: 'low', output_format: 'png' });
    expect(fox.usage?.output_tokens).toBe(2 * 400);
    expect(fox.data).toHaveLength(2);
    const [first, second] = (fox.data ?? []).map((image) => Buffer.from(image.b64_json ?? '', 'base64'));
    expect(readPng(first ?? Buffer.alloc(0))).toMatchObject({ width: 1536, height: 1024 });
    expect(first?.equals(second ?? Buffer.alloc(0))).toBe(false);
    const owl = outputs.owl as OpenAI.ImagesResponse;
    expect(readPng(Buffer.from(owl.data?.[0]?.b64_json ?? '', 'base64'))).toMatchObject({
      width: 64,
      height: 64,
    });
    expect(batch.usage?.output_tokens).toBe(800 + 1056);
  });

  it('answers image edits, counting the input images', async () => {
    const { outputs } = await run('/v1/images/edits', {
      hat: {
        model: 'gpt-image-1',
        prompt: 'add a hat',
        size: '1024x1024',
        images: [{ image_url: 'https://example.com/a.png' }, { file_id: 'file-abc' }],
      },
    });
    const hat = outputs.hat as OpenAI.ImagesResponse;
    validate('ImagesResponse', hat);
    expect(hat.usage?.input_tokens_details.image_tokens).toBe(2 * 194);
    expect(readPng(Buffer.from(hat.data?.[0]?.b64_json ?? '', 'base64'))).toMatchObject({
      width: 1024,
      height: 1024,
    });
  });

  it('refuses an edit without images as OpenAI does: a 400 naming images, in the error file', async () => {
    const file = await uploadLines(client, [
      JSON.stringify({
        custom_id: 'bare',
        method: 'POST',
        url: '/v1/images/edits',
        body: { model: 'gpt-image-1', prompt: 'add a hat' },
      }),
    ]);
    const created = await client.batches.create({
      input_file_id: file.id,
      endpoint: '/v1/images/edits',
      completion_window: '24h',
    });
    for (let i = 0; i < 3; i++) {
      clock.advance(1000);
      await emulator.settle();
    }
    const batch = await client.batches.retrieve(created.id);
    const [line] = await fileLines(client, batch.error_file_id);
    const response = line?.response as { status_code: number; body: { error: Record<string, unknown> } };
    expect(response.status_code).toBe(400);
    expect(response.body.error).toMatchObject({ code: 'missing_required_parameter', param: 'images' });
  });

  it('answers videos with the video object, with the requested length and OpenAI defaults else', async () => {
    const { outputs } = await run('/v1/videos', {
      waves: { model: 'sora-2', prompt: 'waves at dusk', seconds: '8' },
      rain: { model: 'sora-2', prompt: 'rain', size: '1280x720' },
    });
    validate('VideoResource', outputs.waves);
    validate('VideoResource', outputs.rain);
    expect(outputs.waves).toMatchObject({
      object: 'video',
      status: 'completed',
      seconds: '8',
      size: '720x1280',
      prompt: 'waves at dusk',
    });
    expect(outputs.rain).toMatchObject({ seconds: '4', size: '1280x720' });
  });
});
