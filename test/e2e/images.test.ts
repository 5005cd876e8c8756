import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, ListObjectsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadWork } from '../../infra/works';
import { synthesizeDefinition } from '../../local/definition';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { ManualTime } from '../support/manual-time';

/**
 * An images work run end to end on the synthesized state machine against the emulator: every image lands
 * as a PNG object under runs/<id>/images/, and the outputs hold the objects' keys, never base64.
 */

const RECORDS = [
  { id: 'fox', prompt: 'a red fox', size: '1024x1536', n: 2 },
  { id: 'owl', prompt: 'an owl' },
  { id: 'sea/side', prompt: 'the sea', size: '1536x1024' },
  { id: 'moon', prompt: 'the moon', size: '1024x1024' },
];

let dir: string;
let env: LocalEnvironment;
const time = new ManualTime({ start: Date.UTC(2026, 10, 26) });

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-images-'));
  env = await startLocalEnvironment(
    dir,
    time.emulator({ validationMs: 1000, requestsPerSecond: 100, finalizingMs: 1000, seed: 3 }),
  );
  const body = `${RECORDS.map((r) => JSON.stringify(r)).join('\n')}\n`;
  await env.s3.client.send(
    new PutObjectCommand({ Bucket: env.s3.bucket, Key: 'inputs/images.jsonl', Body: body }),
  );
});

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function objectBytes(key: string): Promise<Buffer> {
  const got = await env.s3.client.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: key }));
  return Buffer.from((await got.Body?.transformToByteArray()) ?? []);
}

async function keysUnder(prefix: string): Promise<string[]> {
  const listed = await env.s3.client.send(new ListObjectsCommand({ Bucket: env.s3.bucket, Prefix: prefix }));
  return (listed.Contents ?? []).map((o) => o.Key ?? '').sort();
}

/** The width and height in a PNG's IHDR, after checking the signature and that IHDR comes first. */
function pngSize(bytes: Buffer): { width: number; height: number } {
  expect([...bytes.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  expect(bytes.readUInt32BE(8)).toBe(13);
  expect(bytes.toString('ascii', 12, 16)).toBe('IHDR');
  return { width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) };
}

describe('an images work', () => {
  it('writes each image as a PNG object, and outputs that hold their keys', async () => {
    const loaded = await loadWork(new URL('../fixtures/works/images.ts', import.meta.url).pathname);
    const { definition } = await synthesizeDefinition(loaded);
    const result = await runLocally(env, loaded, 'inputs/images.jsonl', 'pictures', time.runOptions(env), {
      definition,
    });
    expect(result.output).toMatchObject({ summary: { records: 4, outputs: 4, errors: 0, balanced: true } });

    const outputs: Record<string, { images: { key: string; index: number }[]; response: object }> = {};
    for (const key of await keysUnder('runs/pictures/outputs/')) {
      const text = (await objectBytes(key)).toString('utf8');
      expect(text).not.toContain('b64_json');
      for (const line of text.split('\n')) if (line) outputs[JSON.parse(line).id] = JSON.parse(line);
    }
    expect(Object.keys(outputs).sort()).toEqual(['fox', 'moon', 'owl', 'sea/side']);

    const prefix = 'runs/pictures/images/';
    const expected = {
      fox: [`${prefix}fox-0.png`, `${prefix}fox-1.png`],
      owl: [`${prefix}owl-0.png`],
      'sea/side': [`${prefix}sea%2Fside-0.png`],
      moon: [`${prefix}moon-0.png`],
    };
    for (const [id, keys] of Object.entries(expected)) {
      expect(outputs[id]?.images.map((image) => image.key)).toEqual(keys);
      expect(outputs[id]?.response).toMatchObject({ data: keys.map((key) => ({ key })) });
    }
    expect(await keysUnder(prefix)).toEqual(Object.values(expected).flat().sort());

    const sizes = {
      [`${prefix}fox-0.png`]: { width: 1024, height: 1536 },
      [`${prefix}fox-1.png`]: { width: 1024, height: 1536 },
      [`${prefix}owl-0.png`]: { width: 64, height: 64 },
      [`${prefix}sea%2Fside-0.png`]: { width: 1536, height: 1024 },
      [`${prefix}moon-0.png`]: { width: 1024, height: 1024 },
    };
    for (const [key, size] of Object.entries(sizes)) expect(pngSize(await objectBytes(key))).toEqual(size);
  });
});
