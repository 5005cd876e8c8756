/**
 * A whole prepare of a large dataset through the real steps: Register, the Prepare lanes (side by side in
 * this process, as the Map state runs them in Lambdas), then Settle, against s3rver (in its own process)
 * and DynamoDB Local. Prints one JSON line: records, seconds, this process's peak RSS, and the largest
 * checkpoint (a lane's checkpoint object or the run record).
 *
 *   tsx bench/scale.ts RECORDS            short records ({"id":"r1","text":"..."}, about 50 bytes each)
 *   tsx bench/scale.ts --gzip RECORDS     the same records gzipped, prepared with a small time budget:
 *                                         prints how many bytes of the gzip object the steps read
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createGzip } from 'node:zlib';
import { DynamoRunStore } from '../functions/adapters/dynamo-run-store';
import { S3BlobStore } from '../functions/adapters/s3-blob-store';
import type { BatchApi, BlobStore } from '../functions/core/ports';
import { runKeys } from '../functions/core/run';
import { defineWork } from '../functions/core/work';
import type { StepDeps } from '../functions/steps/deps';
import { prepare } from '../functions/steps/prepare';
import { register } from '../functions/steps/register';
import { settle } from '../functions/steps/settle';
import { localS3Client, startDynamo } from '../local/stand-ins';
import { startS3Process } from './processes';

const BUCKET = 'bench';
const TABLE = 'bench-runs';
const RUN = 'scale';

/** Short records to embed: the case where per-record costs (ids, counts, part lines) weigh most. */
const work = defineWork<{ id: string; text: string }>({
  name: 'bench-scale',
  endpoint: '/v1/embeddings',
  model: 'text-embedding-3-small',
  prepareConcurrency: 4,
  upload: (record) => ({ id: record.id, input: record.text }),
  download: (item) => ({ id: item.id }),
});

/** RECORDS short JSONL records, in chunks of about 1 MiB. */
async function* shortRecords(records: number): AsyncGenerator<Uint8Array> {
  const perChunk = 20_000;
  for (let first = 0; first < records; first += perChunk) {
    const lines: string[] = [];
    for (let i = first; i < Math.min(records, first + perChunk); i++)
      lines.push(`{"id":"r${i}","text":"short text number ${i}"}`);
    yield Buffer.from(`${lines.join('\n')}\n`);
  }
}

/** Writes the dataset (run in a child process, so that its memory is not counted). */
async function seed(endpoint: string, key: string, records: number, gzip: boolean): Promise<void> {
  const blobs = new S3BlobStore(localS3Client(endpoint), BUCKET);
  const body = gzip ? Readable.from(shortRecords(records)).pipe(createGzip()) : shortRecords(records);
  await blobs.write(key, body);
}

/** Counts the bytes read from one key. */
function counting(blobs: BlobStore, key: string): { store: BlobStore; read: () => number } {
  let read = 0;
  const store: BlobStore = {
    read: (k, start) => {
      const source = blobs.read(k, start);
      if (k !== key) return source;
      return (async function* () {
        for await (const chunk of source) {
          read += chunk.length;
          yield chunk;
        }
      })();
    },
    write: (k, body) => blobs.write(k, body),
    head: (k) => blobs.head(k),
    list: (prefix) => blobs.list(prefix),
    delete: (keys) => blobs.delete(keys),
    markIntermediate: (k, mark) => blobs.markIntermediate(k, mark),
  };
  return { store, read: () => read };
}

const args = process.argv.slice(2);
if (args[0] === '--seed') {
  const [endpoint = '', seedKey = '', count = '0', zipped = 'false'] = args.slice(1);
  await seed(endpoint, seedKey, Number(count), zipped === 'true');
} else {
  const gzip = args[0] === '--gzip';
  const records = Number(gzip ? args[1] : args[0]);
  if (!Number.isInteger(records) || records <= 0) throw new Error('usage: scale.ts [--gzip] RECORDS');
  const key = gzip ? 'inputs/scale.jsonl.gz' : 'inputs/scale.jsonl';
  const dir = mkdtempSync(join(tmpdir(), 'openai-batch-scale-'));
  const s3 = await startS3Process(dir, BUCKET);
  const dynamo = await startDynamo(TABLE);
  try {
    const seeded = spawnSync(
      process.execPath,
      ['--import', 'tsx', 'bench/scale.ts', '--seed', s3.endpoint, key, String(records), String(gzip)],
      { stdio: 'inherit' },
    );
    if (seeded.status !== 0) throw new Error('seeding the dataset failed');
    const counted = counting(new S3BlobStore(s3.client, BUCKET), key);
    const noOpenAI = async (): Promise<BatchApi> => {
      throw new Error('a prepare does not call OpenAI');
    };
    const deps: StepDeps<{ id: string; text: string }> = {
      work,
      bucket: BUCKET,
      blobs: counted.store,
      runs: new DynamoRunStore(dynamo.client, dynamo.table),
      openai: noOpenAI,
      notifier: { notify: async () => {} },
      now: () => Date.now(),
      // gzip: a small budget, so that the dataset is prepared over many steps.
      budgetMs: gzip ? 250 : 20_000,
      maxTicksPerExecution: 1500,
      lostCreateGraceMs: 120_000,
      log: () => {},
      metric: () => {},
    };
    const started = performance.now();
    const registered = await register(deps as StepDeps<unknown>, {
      dataset: key,
      runId: RUN,
      resume: false,
      execution: 'bench',
    });
    const afterRegister = counted.read();
    let steps = 0;
    await Promise.all(
      registered.lanes.map(async (lane) => {
        for (;;) {
          steps += 1;
          if ((await prepare(deps, { runId: RUN, lane })).done) return;
        }
      }),
    );
    for (;;) {
      steps += 1;
      if ((await settle(deps, { runId: RUN })).settled) break;
    }
    const seconds = (performance.now() - started) / 1000;
    const peakRssMiB = Math.round(process.resourceUsage().maxRSS / 1024);
    const run = await deps.runs.getRun(RUN);
    if (!run) throw new Error('the run is gone');
    const keys = runKeys(RUN);
    let checkpointMaxBytes = Buffer.byteLength(JSON.stringify(run));
    for (let lane = 0; lane < run.dataset.lanes; lane++) {
      const info = await deps.blobs.head(keys.lane(lane));
      checkpointMaxBytes = Math.max(checkpointMaxBytes, info?.size ?? 0);
    }
    const size = (await deps.blobs.head(key))?.size ?? 0;
    console.log(
      JSON.stringify({
        records: run.counts.records,
        requests: run.counts.submittedRequests,
        parts: run.counts.parts,
        shards: run.dataset.shards,
        lanes: run.dataset.lanes,
        steps,
        seconds: Number(seconds.toFixed(2)),
        recordsPerSecond: Math.round(run.counts.records / seconds),
        peakRssMiB,
        checkpointMaxBytes,
        datasetBytes: size,
        // Bytes of the dataset object the prepare steps read (Register's content hash not counted).
        bytesReadRatio: Number(((counted.read() - afterRegister) / size).toFixed(3)),
      }),
    );
  } finally {
    await dynamo.stop();
    await s3.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
