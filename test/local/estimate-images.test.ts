import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineWork } from '../../functions/core/work';
import { estimate } from '../../local/estimate';

/** `estimate` for image and video works: images at their price per image, no output tokens. */

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-estimate-images-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function dataset(records: Record<string, unknown>[]): string {
  const file = join(dir, `d${Math.random().toString(36).slice(2)}.jsonl`);
  writeFileSync(file, records.map((r) => JSON.stringify(r)).join('\n'));
  return file;
}

describe('estimate of an images work', () => {
  it('counts images and prices each by model, quality and size, at batch prices', async () => {
    const work = defineWork({ name: 'pictures', endpoint: '/v1/images/generations', model: 'gpt-image-1' });
    const figures = await estimate(
      work,
      dataset([
        { id: 'a', prompt: 'a fox', size: '1024x1024', quality: 'low', n: 2 },
        { id: 'b', prompt: 'an owl', size: '1536x1024', quality: 'high' },
      ]),
    );
    expect(figures).toMatchObject({ requests: 2, images: 3, expectedOutputTokens: 0 });
    expect(figures.costUsd).toBeCloseTo(2 * 0.0055 + 0.125, 9);
    expect(figures.byModel).toMatchObject([{ model: 'gpt-image-1', priced: true, outputTokens: 0 }]);
  });

  it('says no price is known for a model the table lacks', async () => {
    const work = defineWork({ name: 'pictures', endpoint: '/v1/images/generations', model: 'dall-e-2' });
    const figures = await estimate(work, dataset([{ id: 'a', prompt: 'a fox', size: '256x256' }]));
    expect(figures.costUsd).toBeNull();
    expect(figures.byModel).toMatchObject([{ model: 'dall-e-2', priced: false }]);
  });

  it('knows no price for videos', async () => {
    const work = defineWork({ name: 'films', endpoint: '/v1/videos', model: 'sora-2' });
    const figures = await estimate(work, dataset([{ id: 'a', prompt: 'waves' }]));
    expect(figures).toMatchObject({ requests: 1, images: 0, expectedOutputTokens: 0, costUsd: null });
  });
});
