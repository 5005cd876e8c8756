import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Emulator, startEmulator } from '../../local/emulator/server';
import { localCommand } from '../../local/local-command';

/** `openai-batch local` with an images work copies the run's images beside outputs.jsonl. */

let dir: string;
let emulator: Emulator;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-download-images-'));
  emulator = await startEmulator({
    validationMs: 50,
    requestsPerSecond: 500,
    finalizingMs: 20,
    tickMs: 10,
    seed: 4,
  });
});

afterAll(async () => {
  await emulator?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('openai-batch local with an images work', () => {
  it('copies every image into <out>/images, named as the keys in outputs.jsonl', async () => {
    const dataset = join(dir, 'prompts.jsonl');
    writeFileSync(
      dataset,
      [
        { id: 'a', prompt: 'a fox', n: 2, size: '1024x1024' },
        { id: 'b', prompt: 'an owl' },
      ]
        .map((r) => JSON.stringify(r))
        .join('\n'),
    );
    const printed: string[] = [];
    const out = join(dir, 'out');
    const result = await localCommand(
      new URL('../fixtures/works/images.ts', import.meta.url).pathname,
      dataset,
      {
        out,
        openaiBaseUrl: emulator.url,
        runId: 'pictures',
        print: (line) => printed.push(line),
      },
    );
    expect(result.exitCode).toBe(0);
    expect(readdirSync(join(out, 'images')).sort()).toEqual(['a-0.png', 'a-1.png', 'b-0.png']);
    expect(printed).toContain(`  images:  ${join(out, 'images')} (3, named as their keys in outputs)`);
    const outputs = readFileSync(join(out, 'outputs.jsonl'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { images: { key: string }[] });
    const keys = outputs.flatMap((o) => o.images.map((i) => i.key)).sort();
    expect(keys).toEqual(['a-0.png', 'a-1.png', 'b-0.png'].map((name) => `runs/pictures/images/${name}`));
    for (const name of ['a-0.png', 'a-1.png', 'b-0.png'])
      expect([...readFileSync(join(out, 'images', name)).subarray(1, 4)]).toEqual([...Buffer.from('PNG')]);
  }, 60_000);
});
