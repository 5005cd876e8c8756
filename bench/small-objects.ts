/**
 * A whole local run over a prefix of many small objects (3 short records each): the synthesized state
 * machine over s3rver, DynamoDB Local and the emulator at full speed. Small objects are packed into
 * shards, so the run's shards, batches and intermediate objects follow the dataset's bytes, not its object
 * count. Prints one JSON line.
 *
 *   tsx bench/small-objects.ts OBJECTS
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DynamoRunStore } from '../functions/adapters/dynamo-run-store';
import { S3BlobStore } from '../functions/adapters/s3-blob-store';
import type { BatchApi } from '../functions/core/ports';
import { writeAll } from '../functions/steps/storage';
import { loadWork, WORKS_DIR } from '../infra/works';
import { runLocally, startLocalEnvironment } from '../local/runner';

const objects = Number(process.argv[2] ?? 1000);
const RECORDS = 3;
const WRITES_IN_FLIGHT = 32;
const dir = mkdtempSync(join(tmpdir(), 'openai-batch-small-objects-'));
const env = await startLocalEnvironment(dir, {
  kind: 'emulator',
  options: { validationMs: 0, finalizingMs: 0, requestsPerSecond: 1e9, tickMs: 10, seed: 1 },
});
try {
  const blobs = new S3BlobStore(env.s3.client, env.s3.bucket);
  const body = (o: number) =>
    Array.from({ length: RECORDS }, (_, i) =>
      JSON.stringify({ id: `o${o}-${i}`, content: `question ${i} of ${o}` }),
    )
      .join('\n')
      .concat('\n');
  for (let o = 0; o < objects; o += WRITES_IN_FLIGHT)
    await Promise.all(
      Array.from({ length: Math.min(WRITES_IN_FLIGHT, objects - o) }, (_, i) =>
        writeAll(blobs, `inputs/bench/small/${String(o + i).padStart(6, '0')}.jsonl`, body(o + i)),
      ),
    );
  const loaded = await loadWork(join(WORKS_DIR, 'example.ts'));
  let batches = 0;
  const started = performance.now();
  const result = await runLocally(env, loaded, 'inputs/bench/small/', 'bench-small', {
    waitMs: 0,
    wrap: {
      openai: (api: BatchApi): BatchApi =>
        new Proxy(api, {
          get: (target, property, receiver) =>
            property === 'createBatch'
              ? (input: Parameters<BatchApi['createBatch']>[0]) => {
                  batches += 1;
                  return target.createBatch(input);
                }
              : Reflect.get(target, property, receiver),
        }),
    },
  });
  const seconds = (performance.now() - started) / 1000;
  const run = await new DynamoRunStore(env.dynamo.client, env.dynamo.table).getRun('bench-small');
  const output = result.output as {
    summary?: { records: number; outputs: number; balanced: boolean };
    cleanUp?: { objects: number };
  };
  if (!output.summary?.balanced || output.summary.outputs !== objects * RECORDS)
    throw new Error(`the run lost records: ${JSON.stringify(output.summary)}`);
  console.log(
    JSON.stringify({
      objects,
      records: output.summary.records,
      shards: run?.dataset.shards,
      batches,
      intermediateObjects: output.cleanUp?.objects,
      seconds: Number(seconds.toFixed(2)),
    }),
  );
} finally {
  await env.stop();
  rmSync(dir, { recursive: true, force: true });
}
