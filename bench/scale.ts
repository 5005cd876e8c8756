/**
 * A whole prepare of a large dataset through the real steps, each in a process of its own as each runs in
 * a Lambda of its own on AWS: Register, then the Prepare lanes side by side (one process a lane, which
 * runs the lane's steps one after the other, as the Map state's iterations do in a warm Lambda), then
 * Settle, against s3rver (in its own process) and DynamoDB Local (Java). The dataset is written by
 * another process. Prints one JSON line: records, seconds (Register, the lanes, Settle), the peak RSS of
 * each kind of step process (the largest is `peakRssMiB`) and the Node.js they ran on (`stepNode`), the
 * largest checkpoint (a lane's checkpoint object or the run record), and what the run left under
 * `runs/<id>/state/`.
 *
 *   tsx bench/scale.ts RECORDS            short records ({"id":"r1","text":"..."}, about 50 bytes each)
 *   tsx bench/scale.ts --gzip RECORDS     the same records gzipped, prepared with a small time budget:
 *                                         `bytesReadRatio` is the bytes of the gzip object the Prepare
 *                                         and Settle steps read over its size (Register's reads of the
 *                                         dataset, its first bytes and its content hash, not counted)
 *
 * The step processes run this file bundled by esbuild (ESM, minified, node22, as the Lambdas' code is
 * bundled by infra/batch-function.ts) with plain node, since a Lambda runs no tsx: tsx alone adds about
 * 35 MiB of RSS to an idle step. SCALE_TSX=1 runs them with `--import tsx` instead.
 *
 * SCALE_TRACE=1 prints each step process's memory (RSS, heap used, external, array buffers) every second
 * to stderr; SCALE_STEP_FLAGS adds Node flags to the step processes (say `--max-old-space-size=128`, to
 * tell what a step holds from what the collector has not yet taken back).
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createGzip } from 'node:zlib';
import { build } from 'esbuild';
import { DynamoRunStore } from '../functions/adapters/dynamo-run-store';
import { S3BlobStore } from '../functions/adapters/s3-blob-store';
import { OpenAIUnavailableError } from '../functions/core/errors';
import type { BatchApi, BlobStore } from '../functions/core/ports';
import { runKeys } from '../functions/core/run';
import { defineWork } from '../functions/core/work';
import type { StepDeps } from '../functions/steps/deps';
import { prepare } from '../functions/steps/prepare';
import { register } from '../functions/steps/register';
import { settle } from '../functions/steps/settle';
import { heapFlagsOf } from '../infra/step-memory';
import { localDynamoClient, localS3Client, startDynamo } from '../local/stand-ins';
import { lambdaNode, nodeVersion, startS3Process } from './processes';

const BUCKET = 'bench';
const TABLE = 'bench-runs';
const RUN = 'scale';
const MiB = 1024 * 1024;

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

/** Counts the bytes read from one key (the bytes the step took from the stream). */
function counting(blobs: BlobStore, key: string): { store: BlobStore; read: () => number } {
  let read = 0;
  const store: BlobStore = {
    read: (k, start, etag, end) => {
      const source = blobs.read(k, start, etag, end);
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

/** The steps' dependencies against the stand-ins, with reads of the dataset key counted. */
function stepDeps(s3Endpoint: string, dynamoEndpoint: string, table: string, key: string, gzip: boolean) {
  const counted = counting(new S3BlobStore(localS3Client(s3Endpoint), BUCKET), key);
  // No OpenAI here: lane 0's early send of shard 0's parts finds it unavailable and leaves them to Tick.
  const noOpenAI = async (): Promise<BatchApi> => {
    throw new OpenAIUnavailableError('no OpenAI in this benchmark', 'openai_unavailable');
  };
  const deps: StepDeps<{ id: string; text: string }> = {
    work,
    bucket: BUCKET,
    blobs: counted.store,
    runs: new DynamoRunStore(localDynamoClient(dynamoEndpoint), table),
    openai: noOpenAI,
    notifier: { notify: async () => {} },
    now: () => Date.now(),
    // gzip: a small budget, so that the dataset is prepared over many steps.
    budgetMs: gzip ? 250 : 20_000,
    inflateMs: Number.POSITIVE_INFINITY, // the copy is inflated whole, as on AWS, where its calls have minutes
    maxTicksPerExecution: 1500,
    lostCreateGraceMs: 120_000,
    log: () => {},
    metric: () => {},
  };
  return { deps, bytesRead: counted.read };
}

/** The largest memory figures of this process, sampled every 250 ms (and its peak RSS from the kernel). */
function sampleMemory(trace: string | null) {
  const peak = { heapUsed: 0, external: 0, arrayBuffers: 0 };
  const take = () => {
    const m = process.memoryUsage();
    peak.heapUsed = Math.max(peak.heapUsed, m.heapUsed);
    peak.external = Math.max(peak.external, m.external);
    peak.arrayBuffers = Math.max(peak.arrayBuffers, m.arrayBuffers);
    return m;
  };
  const timer = setInterval(take, 250);
  let ticks = 0;
  const printer = trace
    ? setInterval(() => {
        const m = take();
        ticks += 1;
        const mib = (n: number) => Math.round(n / MiB);
        process.stderr.write(
          `${trace} ${ticks}s rss ${mib(m.rss)} heapUsed ${mib(m.heapUsed)} heapTotal ${mib(m.heapTotal)} external ${mib(m.external)} arrayBuffers ${mib(m.arrayBuffers)} MiB\n`,
        );
      }, 1000)
    : null;
  return () => {
    take();
    clearInterval(timer);
    if (printer) clearInterval(printer);
    const mib = (n: number) => Math.round(n / MiB);
    return {
      peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
      peakHeapUsedMiB: mib(peak.heapUsed),
      peakExternalMiB: mib(peak.external),
      peakArrayBuffersMiB: mib(peak.arrayBuffers),
    };
  };
}

/** What a step process prints: its steps, the dataset bytes it read, and its memory. */
interface StepReport {
  steps: number;
  lanes: number;
  bytesRead: number;
  seconds: number;
  peakRssMiB: number;
  peakHeapUsedMiB: number;
  peakExternalMiB: number;
  peakArrayBuffersMiB: number;
}

/** Runs one kind of step in this process, as one Lambda would: Register once, a lane's steps, or Settle's. */
async function runStep(
  kind: string,
  s3: string,
  dynamo: string,
  table: string,
  key: string,
  gzip: boolean,
  lane: number,
) {
  const { deps, bytesRead } = stepDeps(s3, dynamo, table, key, gzip);
  const memory = sampleMemory(process.env.SCALE_TRACE ? `${kind}${kind === 'lane' ? ` ${lane}` : ''}` : null);
  const started = performance.now();
  let steps = 0;
  let lanes = 0;
  if (kind === 'register') {
    const registered = await register(deps as StepDeps<unknown>, {
      dataset: key,
      runId: RUN,
      resume: false,
      execution: 'bench',
    });
    steps = 1;
    lanes = registered.lanes.length;
  } else if (kind === 'lane') {
    for (;;) {
      steps += 1;
      if ((await prepare(deps, { runId: RUN, lane })).done) break;
    }
  } else if (kind === 'settle') {
    for (;;) {
      steps += 1;
      if ((await settle(deps, { runId: RUN })).settled) break;
    }
  } else {
    throw new Error(`no step ${kind}`);
  }
  const seconds = (performance.now() - started) / 1000;
  const report: StepReport = { steps, lanes, bytesRead: bytesRead(), seconds, ...memory() };
  console.log(JSON.stringify(report));
}

/**
 * This file bundled as a Lambda's code is (infra/batch-function.ts: ESM, minified, node22, every module
 * inside), into `dir`: what the step processes run, with plain node.
 */
async function bundled(dir: string): Promise<string> {
  const outfile = join(dir, 'scale.mjs');
  await build({
    entryPoints: ['bench/scale.ts'],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node22',
    minify: true,
    logLevel: 'warning',
    // Some bundled CommonJS modules call require.
    banner: { js: "import{createRequire}from'node:module';const require=createRequire(import.meta.url);" },
  });
  return outfile;
}

/** Runs a step process (`script`: the bundle, or null for this file through tsx) and waits for its report. */
function stepProcess(script: string | null, args: readonly string[]): Promise<StepReport> {
  // As the functions run: with the heap flags of the state the step is (a lane's steps are Prepare's).
  const state = { register: 'Register', lane: 'Prepare', settle: 'Settle' }[args[0] ?? ''] ?? '';
  const heap = heapFlagsOf(state, work.settings.maxRecordBytes);
  return new Promise((resolve, reject) => {
    execFile(
      lambdaNode(),
      [
        ...heap,
        ...(process.env.SCALE_STEP_FLAGS?.split(' ').filter(Boolean) ?? []),
        ...(script ? [script] : ['--import', 'tsx', 'bench/scale.ts']),
        '--step',
        ...args,
      ],
      { encoding: 'utf8', maxBuffer: 16 * MiB },
      (error, stdout, stderr) => {
        if (stderr) process.stderr.write(stderr);
        if (error) return reject(error);
        const last = stdout.trim().split('\n').at(-1);
        if (!last) return reject(new Error(`step ${args[0]} printed nothing`));
        resolve(JSON.parse(last) as StepReport);
      },
    );
  });
}

/**
 * Objects under a prefix, grouped by the folder after it and by their extension (`ids/*.ids`,
 * `ids/*.idx`, `*.jsonl`, ...): how many, their bytes, and the largest.
 */
async function objectsUnder(blobs: BlobStore, prefix: string) {
  const groups: Record<string, { count: number; bytes: number; maxBytes: number }> = {};
  for await (const object of blobs.list(prefix)) {
    const rest = object.key.slice(prefix.length);
    const folder = rest.includes('/') ? `${rest.slice(0, rest.indexOf('/'))}/` : '';
    const name = rest.slice(folder.length);
    const group = `${folder}${name.includes('.') ? `*${name.slice(name.lastIndexOf('.'))}` : name.includes('/') || folder ? '*' : name}`;
    const g = groups[group] ?? { count: 0, bytes: 0, maxBytes: 0 };
    g.count += 1;
    g.bytes += object.size;
    g.maxBytes = Math.max(g.maxBytes, object.size);
    groups[group] = g;
  }
  return groups;
}

const args = process.argv.slice(2);
if (args[0] === '--seed') {
  const [endpoint = '', seedKey = '', count = '0', zipped = 'false'] = args.slice(1);
  await seed(endpoint, seedKey, Number(count), zipped === 'true');
} else if (args[0] === '--step') {
  const [kind = '', s3 = '', dynamo = '', table = '', key = '', zipped = 'false', lane = '0'] = args.slice(1);
  await runStep(kind, s3, dynamo, table, key, zipped === 'true', Number(lane));
} else {
  const gzip = args[0] === '--gzip';
  const records = Number(gzip ? args[1] : args[0]);
  if (!Number.isInteger(records) || records <= 0) throw new Error('usage: scale.ts [--gzip] RECORDS');
  const key = gzip ? 'inputs/scale.jsonl.gz' : 'inputs/scale.jsonl';
  const dir = mkdtempSync(join(tmpdir(), 'openai-batch-scale-'));
  const bundleDir = mkdtempSync(join(tmpdir(), 'openai-batch-scale-bundle-'));
  const s3 = await startS3Process(dir, BUCKET);
  const dynamo = await startDynamo(TABLE);
  let result: Record<string, unknown> = {};
  let s3PeakRssMiB = 0;
  try {
    const seeded = spawnSync(
      process.execPath,
      ['--import', 'tsx', 'bench/scale.ts', '--seed', s3.endpoint, key, String(records), String(gzip)],
      { stdio: 'inherit' },
    );
    if (seeded.status !== 0) throw new Error('seeding the dataset failed');
    const script = process.env.SCALE_TSX ? null : await bundled(bundleDir);
    const step = (kind: string, lane = 0) =>
      stepProcess(script, [
        kind,
        s3.endpoint,
        dynamo.endpoint,
        dynamo.table,
        key,
        String(gzip),
        String(lane),
      ]);
    const started = performance.now();
    const registered = await step('register');
    const lanesStarted = performance.now();
    const lanes = await Promise.all(
      Array.from({ length: registered.lanes }, (_, lane) => step('lane', lane)),
    );
    const settleStarted = performance.now();
    const settled = await step('settle');
    const ended = performance.now();
    const seconds = (ended - started) / 1000;

    const { deps } = stepDeps(s3.endpoint, dynamo.endpoint, dynamo.table, key, gzip);
    const run = await deps.runs.getRun(RUN);
    if (!run) throw new Error('the run is gone');
    if (!run.prepared) throw new Error('the run was not prepared');
    const keys = runKeys(RUN);
    const runRecordBytes = Buffer.byteLength(JSON.stringify(run));
    let laneCheckpointMaxBytes = 0;
    for (let lane = 0; lane < run.dataset.lanes; lane++) {
      const info = await deps.blobs.head(keys.lane(lane));
      laneCheckpointMaxBytes = Math.max(laneCheckpointMaxBytes, info?.size ?? 0);
    }
    const state = await objectsUnder(deps.blobs, `${keys.prefix}state/`);
    const requests = await objectsUnder(deps.blobs, `${keys.prefix}requests/`);
    const size = (await deps.blobs.head(key))?.size ?? 0;
    const parts = await deps.runs.listParts(RUN);
    const lanePeak = Math.max(...lanes.map((l) => l.peakRssMiB));
    const laneMax = (f: (l: StepReport) => number) => Math.max(...lanes.map(f));
    const bytesRead = lanes.reduce((n, l) => n + l.bytesRead, 0) + settled.bytesRead;
    const mem = (r: StepReport) => ({
      peakRssMiB: r.peakRssMiB,
      peakHeapUsedMiB: r.peakHeapUsedMiB,
      peakExternalMiB: r.peakExternalMiB,
      peakArrayBuffersMiB: r.peakArrayBuffersMiB,
    });
    result = {
      records: run.counts.records,
      requests: run.counts.submittedRequests,
      duplicates: run.settle?.duplicates ?? 0,
      parts: parts.length,
      shards: run.dataset.shards,
      lanes: run.dataset.lanes,
      partitions: run.dataset.partitions,
      laneSteps: lanes.reduce((n, l) => n + l.steps, 0),
      settleSteps: settled.steps,
      seconds: Number(seconds.toFixed(2)),
      registerSeconds: Number(((lanesStarted - started) / 1000).toFixed(2)),
      lanesSeconds: Number(((settleStarted - lanesStarted) / 1000).toFixed(2)),
      settleSeconds: Number(((ended - settleStarted) / 1000).toFixed(2)),
      recordsPerSecond: Math.round(run.counts.records / seconds),
      /** Records a second of one lane, in its own process (its records over its own time). */
      laneRecordsPerSecond: Math.round(run.counts.records / lanes.reduce((n, l) => n + l.seconds, 0)),
      peakRssMiB: Math.max(registered.peakRssMiB, lanePeak, settled.peakRssMiB),
      memory: {
        register: mem(registered),
        lane: {
          peakRssMiB: lanePeak,
          peakHeapUsedMiB: laneMax((l) => l.peakHeapUsedMiB),
          peakExternalMiB: laneMax((l) => l.peakExternalMiB),
          peakArrayBuffersMiB: laneMax((l) => l.peakArrayBuffersMiB),
        },
        settle: mem(settled),
      },
      checkpointMaxBytes: Math.max(runRecordBytes, laneCheckpointMaxBytes),
      runRecordBytes,
      laneCheckpointMaxBytes,
      state,
      requestFiles: requests,
      datasetBytes: size,
      datasetBytesRead: bytesRead,
      bytesReadRatio: Number((bytesRead / size).toFixed(3)),
    };
  } finally {
    await dynamo.stop();
    s3PeakRssMiB = await s3.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(bundleDir, { recursive: true, force: true });
  }
  console.log(JSON.stringify({ ...result, s3PeakRssMiB, stepNode: nodeVersion(lambdaNode()) }));
}
