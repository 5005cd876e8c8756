/**
 * A whole local run at full speed: the synthesized state machine over s3rver, DynamoDB Local and the
 * emulator (no validation or finalizing delay, requests processed as fast as it can), from a generated
 * dataset already in S3 to outputs in S3. Prints one JSON line with the seconds per 100,000 requests.
 *
 *   tsx bench/e2e.ts REQUESTS
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { S3BlobStore } from '../functions/adapters/s3-blob-store';
import { readAll } from '../functions/steps/storage';
import { loadWork, WORKS_DIR } from '../infra/works';
import { runLocally, startLocalEnvironment } from '../local/runner';
import { chatDataset } from './generate';

const requests = Number(process.argv[2] ?? 100_000);
const dir = mkdtempSync(join(tmpdir(), 'openai-batch-e2e-'));
const env = await startLocalEnvironment(dir, {
  kind: 'emulator',
  options: { validationMs: 0, finalizingMs: 0, requestsPerSecond: 1e9, tickMs: 10, seed: 1 },
});
try {
  const blobs = new S3BlobStore(env.s3.client, env.s3.bucket);
  // About 1 KB a record, so `requests` records or a few more.
  await blobs.write('inputs/bench/e2e.jsonl', chatDataset(requests * 1000));
  const loaded = await loadWork(join(WORKS_DIR, 'example.ts'));
  const started = performance.now();
  const result = await runLocally(env, loaded, 'inputs/bench/e2e.jsonl', 'bench-e2e', {
    waitMs: 0,
  });
  const seconds = (performance.now() - started) / 1000;
  const summary = JSON.parse(
    Buffer.from(await readAll(blobs, 'runs/bench-e2e/summary.json')).toString('utf8'),
  ) as { counts: { records: number; outputs: number; errors: number } };
  if (summary.counts.outputs !== summary.counts.records)
    throw new Error(`the run lost records: ${JSON.stringify(summary.counts)}`);
  console.log(
    JSON.stringify({
      requests: summary.counts.records,
      outputs: summary.counts.outputs,
      executions: result.executions,
      seconds: Number(seconds.toFixed(2)),
      secondsPer100kRequests: Number(((seconds * 100_000) / summary.counts.records).toFixed(2)),
    }),
  );
} finally {
  await env.stop();
  rmSync(dir, { recursive: true, force: true });
}
