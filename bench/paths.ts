/**
 * The prepare or the collect path over S3 (s3rver, in this process), beside a raw baseline in the same
 * process and run: read the same objects and split them into lines, nothing else. Prints one JSON line
 * with records a second, the ratio to the baseline, and this process's peak RSS.
 *
 *   tsx bench/paths.ts prepare|collect BYTES
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { S3BlobStore } from '../functions/adapters/s3-blob-store';
import { collectPart } from '../functions/core/collect';
import { IdRegistry } from '../functions/core/ids';
import { linesOf } from '../functions/core/lines';
import { prepareDataset } from '../functions/core/prepare';
import { newPart, runKeys } from '../functions/core/run';
import { LazyJsonl, StoredParts } from '../functions/steps/storage';
import { startS3 } from '../local/stand-ins';
import example from '../works/example';
import { chatDataset } from './generate';

const mode = process.argv[2] === 'collect' ? 'collect' : 'prepare';
const bytes = Number(process.argv[3] ?? 100e6);
const dir = mkdtempSync(join(tmpdir(), 'openai-batch-paths-'));
const s3 = await startS3(dir, 'bench');
const blobs = new S3BlobStore(s3.client, 'bench');
const keys = runKeys('bench');

/** The baseline: read objects and split them into lines. */
async function rawRead(objectKeys: string[]): Promise<{ lines: number; seconds: number }> {
  const started = performance.now();
  let lines = 0;
  for (const key of objectKeys) for await (const _ of linesOf(blobs.read(key), 256 * 1024 * 1024)) lines += 1;
  return { lines, seconds: (performance.now() - started) / 1000 };
}

/** OpenAI's output lines for a part of chat requests, generated in chunks. */
async function* outputFile(ids: string[]): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < ids.length; i += 500) {
    const lines = ids.slice(i, i + 500).map((id) =>
      JSON.stringify({
        id: `batch_req_${id}`,
        custom_id: id,
        response: {
          status_code: 200,
          request_id: `req_${id}`,
          body: {
            id: `chatcmpl-${id}`,
            object: 'chat.completion',
            model: 'gpt-4o-mini',
            choices: [
              {
                index: 0,
                message: { role: 'assistant', content: 'lorem ipsum dolor sit amet '.repeat(20) },
                finish_reason: 'stop',
              },
            ],
            usage: { prompt_tokens: 250, completion_tokens: 140, total_tokens: 390 },
          },
        },
        error: null,
      }),
    );
    yield Buffer.from(`${lines.join('\n')}\n`);
  }
}

let records = 0;
let seconds = 0;
let baseline: { lines: number; seconds: number };
if (mode === 'prepare') {
  await blobs.write('inputs/bench.jsonl', chatDataset(bytes));
  baseline = await rawRead(['inputs/bench.jsonl']);
  const started = performance.now();
  const parts = new StoredParts(blobs, 'bench');
  const errors = new LazyJsonl(blobs, keys.prepareErrors(0, 1));
  const result = await prepareDataset({
    source: blobs.read('inputs/bench.jsonl'),
    work: example,
    ids: new IdRegistry(),
    parts,
    errors,
  });
  await errors.close();
  seconds = (performance.now() - started) / 1000;
  records = result.counts.records;
} else {
  // Parts of 50,000 requests whose output files (about 1 KB a line) add up to BYTES.
  const perPart = 50_000;
  const total = Math.ceil(bytes / 1000);
  const partKeys: string[] = [];
  const plan: { part: number; ids: string[] }[] = [];
  for (let part = 0; part * perPart < total; part++) {
    const ids = Array.from(
      { length: Math.min(perPart, total - part * perPart) },
      (_, i) => `r${part * perPart + i}`,
    );
    const requests = new StoredParts(blobs, 'bench');
    for (const [i, id] of ids.entries())
      await requests.writeRaw(
        part,
        JSON.stringify({ custom_id: id, method: 'POST', url: '/v1/chat/completions', body: {} }),
        i + 1,
      );
    await requests.close({ part });
    await blobs.write(`openai/output-${part}.jsonl`, outputFile(ids));
    partKeys.push(`openai/output-${part}.jsonl`);
    plan.push({ part, ids });
  }
  baseline = await rawRead(partKeys);
  const started = performance.now();
  for (const { part, ids } of plan) {
    const outputs = new LazyJsonl(blobs, keys.outputs(part));
    const errors = new LazyJsonl(blobs, keys.errors(part));
    const result = await collectPart({
      work: example,
      part: {
        ...newPart({
          part,
          generation: 0,
          model: 'gpt-4o-mini',
          requests: ids.length,
          bytes: 0,
          estimatedTokens: 0,
        }),
        batchId: `batch_${part}`,
      },
      requests: () => blobs.read(keys.requests(part)),
      lines: () => blobs.read(keys.lines(part)),
      outputFile: () => blobs.read(`openai/output-${part}.jsonl`),
      errorFile: null,
      outputs,
      errors,
      resubmit: null,
    });
    await Promise.all([outputs.close(), errors.close()]);
    records += result.outputs;
  }
  seconds = (performance.now() - started) / 1000;
}

await s3.stop();
rmSync(dir, { recursive: true, force: true });
console.log(
  JSON.stringify({
    mode,
    bytes,
    records,
    seconds: Number(seconds.toFixed(2)),
    recordsPerSecond: Math.round(records / seconds),
    baselineLinesPerSecond: Math.round(baseline.lines / baseline.seconds),
    baselineRatio: Number((baseline.seconds / seconds).toFixed(3)),
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
  }),
);
