/**
 * The prepare or the collect path over S3 beside a raw baseline in the same process and run: read the
 * same objects and split them into lines, nothing else (three times; the median of each figure). After them
 * two floors: the same read with a JSON.parse and a JSON.stringify of each line, then the same with a write
 * of what that gave to S3. s3rver runs in a process of its own, and the objects are
 * written by another, so that this process's peak RSS is the path's (and the baseline's).
 * Prints one JSON line with records a second, the ratios to the baseline (the path's and the floors'), and
 * the peak RSS. Records are about 1 KB, or RECORD_BYTES for prepare.
 *
 *   tsx bench/paths.ts prepare|collect BYTES [chat|embed] [RECORD_BYTES]
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { S3BlobStore } from '../functions/adapters/s3-blob-store';
import { collectPart } from '../functions/core/collect';
import { partitionsFor } from '../functions/core/id-files';
import { linesOf } from '../functions/core/lines';
import { LineIds, prepareDataset } from '../functions/core/prepare';
import { newPart, runKeys } from '../functions/core/run';
import { LazyJsonl, StoredIdFiles, StoredParts } from '../functions/steps/storage';
import { localS3Client } from '../local/stand-ins';
import { chatDataset } from './generate';
import { startS3Process } from './processes';
import { type BenchKind, benchWork } from './works';

const PER_PART = 50_000;
const BUCKET = 'bench';
const INPUT = 'inputs/bench.jsonl';
const keys = runKeys('bench');

/** The parts of a collect benchmark over BYTES of output: 50,000 records a part, ids r0, r1, ... */
function collectPlan(bytes: number): { part: number; first: number; count: number }[] {
  const total = Math.ceil(bytes / 1000);
  const plan = [];
  for (let part = 0; part * PER_PART < total; part++)
    plan.push({ part, first: part * PER_PART, count: Math.min(PER_PART, total - part * PER_PART) });
  return plan;
}

const idsOf = (first: number, count: number): string[] =>
  Array.from({ length: count }, (_, i) => `r${first + i}`);

/** OpenAI's output lines for a part, generated in chunks: about 1 KB a chat line. */
async function* outputFile(ids: string[], kind: BenchKind): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < ids.length; i += 500) {
    const lines = ids.slice(i, i + 500).map((id) =>
      JSON.stringify({
        id: `batch_req_${id}`,
        custom_id: id,
        response: { status_code: 200, request_id: `req_${id}`, body: responseBody(id, kind) },
        error: null,
      }),
    );
    yield Buffer.from(`${lines.join('\n')}\n`);
  }
}

function responseBody(id: string, kind: BenchKind): unknown {
  if (kind === 'embed')
    return {
      object: 'list',
      model: 'text-embedding-3-small',
      data: [{ object: 'embedding', index: 0, embedding: Array.from({ length: 64 }, (_, i) => (i % 7) / 7) }],
      usage: { prompt_tokens: 250, total_tokens: 250 },
    };
  return {
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
  };
}

/** A request line as prepare writes it for a generated record of about 1 KB (the request file is as large). */
function requestLine(id: string, kind: BenchKind): string {
  const content = 'lorem ipsum dolor sit amet '.repeat(36).slice(0, 960);
  const body =
    kind === 'embed'
      ? { model: 'text-embedding-3-small', input: content }
      : {
          model: 'gpt-4o-mini',
          messages: [
            { role: 'system', content: 'You are a helpful assistant.' },
            { role: 'user', content },
          ],
        };
  const url = kind === 'embed' ? '/v1/embeddings' : '/v1/chat/completions';
  return JSON.stringify({ custom_id: id, method: 'POST', url, body });
}

/** Writes the objects a benchmark reads (run in a child process, so that its memory is not counted). */
async function seed(
  mode: string,
  bytes: number,
  kind: BenchKind,
  endpoint: string,
  recordBytes: number,
): Promise<void> {
  const blobs = new S3BlobStore(localS3Client(endpoint), BUCKET);
  if (mode === 'prepare') {
    await blobs.write(INPUT, chatDataset(bytes, recordBytes));
    return;
  }
  for (const { part, first, count } of collectPlan(bytes)) {
    const ids = idsOf(first, count);
    const requests = new StoredParts(blobs, 'bench');
    for (const [i, id] of ids.entries()) await requests.writeRaw(part, requestLine(id, kind), i + 1, id);
    await requests.close({ part });
    await blobs.write(`openai/output-${part}.jsonl`, outputFile(ids, kind));
  }
}

/** The baseline: read objects and split them into lines. */
async function rawRead(
  blobs: S3BlobStore,
  objectKeys: string[],
): Promise<{ lines: number; seconds: number }> {
  const started = performance.now();
  let lines = 0;
  for (const key of objectKeys) for await (const _ of linesOf(blobs.read(key), 256 * 1024 * 1024)) lines += 1;
  return { lines, seconds: (performance.now() - started) / 1000 };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A floor: JSON.parse and JSON.stringify of every line, which a path cannot leave out (prepare parses each
 * record and writes a request that holds its text; collect parses each result and writes an output that
 * holds its answer), over the objects the baseline reads, split as it splits them. The stringified value is
 * as large as the line read, where prepare writes a request a little larger and collect an output smaller.
 * With `write`, the lines go to S3 through the writer the paths use (LazyJsonl, S3BlobStore): what JSON and
 * this write path cost a line, with no work of a path's own.
 */
async function floorPath(blobs: S3BlobStore, objectKeys: string[], write: boolean): Promise<number> {
  let lines = 0;
  let characters = 0;
  for (const [i, key] of objectKeys.entries()) {
    const out = write ? new LazyJsonl(blobs, `floor/${i}.jsonl`) : null;
    for await (const raw of linesOf(blobs.read(key), 256 * 1024 * 1024)) {
      if (!raw.bytes) continue;
      const json = JSON.stringify(JSON.parse(utf8.decode(raw.bytes)));
      characters += json.length;
      const pending = out?.add(json);
      if (pending) await pending;
      lines += 1;
    }
    await out?.close();
  }
  if (characters === 0) throw new Error('the floor read nothing');
  return lines;
}

/** A prepare lane's path over one shard: ids claimed within a line, every request's id entry to id files. */
async function preparePath(blobs: S3BlobStore, kind: BenchKind, bytes: number): Promise<number> {
  const ids = new StoredIdFiles(blobs, 'bench', 0, 1, partitionsFor(bytes));
  const parts = new StoredParts(blobs, 'bench', (part, request) => ids.place(part, request));
  const errors = new LazyJsonl(blobs, keys.prepareErrors(0, 1));
  const result = await prepareDataset({
    source: blobs.read(INPUT),
    work: benchWork(kind),
    ids: new LineIds(),
    parts,
    errors,
  });
  await errors.close();
  await ids.close();
  return result.counts.records;
}

async function collectPath(blobs: S3BlobStore, bytes: number, kind: BenchKind): Promise<number> {
  let records = 0;
  for (const { part, count } of collectPlan(bytes)) {
    const outputs = new LazyJsonl(blobs, keys.outputs(part));
    const errors = new LazyJsonl(blobs, keys.errors(part));
    const result = await collectPart({
      work: benchWork(kind),
      part: {
        ...newPart({ part, generation: 0, model: 'm', requests: count, bytes: 0, estimatedTokens: 0 }),
        batchId: `batch_${part}`,
      },
      requests: () => blobs.read(keys.requests(part)),
      lines: () => blobs.read(keys.entries(part)),
      outputFile: () => blobs.read(`openai/output-${part}.jsonl`),
      errorFile: null,
      outputs,
      errors,
      resubmit: null,
    });
    await Promise.all([outputs.close(), errors.close()]);
    records += result.outputs;
  }
  return records;
}

const [first, ...rest] = process.argv.slice(2);
if (first === '--seed') {
  const [mode = 'prepare', bytes = '0', kind = 'chat', endpoint = '', recordBytes = '1000'] = rest;
  await seed(mode, Number(bytes), kind as BenchKind, endpoint, Number(recordBytes));
} else {
  const mode = first === 'collect' ? 'collect' : 'prepare';
  const bytes = Number(rest[0] ?? 100e6);
  const kind: BenchKind = rest[1] === 'embed' ? 'embed' : 'chat';
  const recordBytes = mode === 'prepare' ? Number(rest[2] ?? 1000) : 1000;
  const dir = mkdtempSync(join(tmpdir(), 'openai-batch-paths-'));
  const s3 = await startS3Process(dir, BUCKET);
  try {
    const seeded = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        'bench/paths.ts',
        '--seed',
        mode,
        String(bytes),
        kind,
        s3.endpoint,
        String(recordBytes),
      ],
      { stdio: 'inherit' },
    );
    if (seeded.status !== 0) throw new Error('seeding the benchmark objects failed');
    const blobs = new S3BlobStore(s3.client, BUCKET);
    const objectKeys =
      mode === 'prepare' ? [INPUT] : collectPlan(bytes).map(({ part }) => `openai/output-${part}.jsonl`);
    const cpu = (usage: NodeJS.CpuUsage) => Number(((usage.user + usage.system) / 1e6).toFixed(2));
    // The raw read three times, and the median of each figure: one read takes about a second, which a busy
    // machine moves by half either way.
    const reads: { lines: number; seconds: number; cpuSeconds: number; s3CpuSeconds: number }[] = [];
    for (let i = 0; i < 3; i++) {
      const s3Before = s3.cpuSeconds();
      const cpuBefore = process.cpuUsage();
      const read = await rawRead(blobs, objectKeys);
      reads.push({
        ...read,
        cpuSeconds: cpu(process.cpuUsage(cpuBefore)),
        s3CpuSeconds: s3.cpuSeconds() - s3Before,
      });
    }
    const median = (figure: (read: (typeof reads)[number]) => number) =>
      reads.map(figure).sort((a, b) => a - b)[1] ?? Number.NaN;
    const baseline = { lines: reads[0]?.lines ?? 0, seconds: median((r) => r.seconds) };
    const baselineCpu = median((r) => r.cpuSeconds);
    const s3Baseline = s3.cpuSeconds();
    const cpuStarted = process.cpuUsage();
    const started = performance.now();
    const records =
      mode === 'prepare' ? await preparePath(blobs, kind, bytes) : await collectPath(blobs, bytes, kind);
    const seconds = (performance.now() - started) / 1000;
    const pathCpu = process.cpuUsage(cpuStarted);
    const s3Path = s3.cpuSeconds();
    const peakRssMiB = Math.round(process.resourceUsage().maxRSS / 1024);
    // The floors after the path, so that the peak RSS is the path's alone (s3rver's includes the floor's
    // writes). Each: its CPU a line, against the raw read's.
    const floor = async (write: boolean) => {
      const before = process.cpuUsage();
      const lines = await floorPath(blobs, objectKeys, write);
      const cpuSeconds = cpu(process.cpuUsage(before));
      return {
        cpuSeconds,
        cpuRatio: Number((baselineCpu / baseline.lines / (cpuSeconds / lines)).toFixed(3)),
      };
    };
    const jsonFloor = await floor(false);
    const writeFloor = await floor(true);
    await blobs.delete(objectKeys.map((_, i) => `floor/${i}.jsonl`));
    const s3PeakRssMiB = await s3.stop();
    console.log(
      JSON.stringify({
        node: process.version,
        mode,
        kind,
        bytes,
        recordBytes,
        records,
        seconds: Number(seconds.toFixed(2)),
        recordsPerSecond: Math.round(records / seconds),
        baselineLinesPerSecond: Math.round(baseline.lines / baseline.seconds),
        baselineRatio: Number((baseline.seconds / seconds).toFixed(3)),
        // The same ratio on one core: the CPU a line of the raw read took over the CPU a record of the path
        // took, in this process (S3 is not on the function's core on AWS; s3rver is on this machine's).
        cpuRatio: Number((baselineCpu / baseline.lines / (cpu(pathCpu) / Math.max(1, records))).toFixed(3)),
        // The floors' CPU ratios: JSON.parse and JSON.stringify of each line alone, then with its write to
        // S3; a path that did nothing else would reach them.
        jsonCpuRatio: jsonFloor.cpuRatio,
        floorCpuRatio: writeFloor.cpuRatio,
        jsonCpuSeconds: jsonFloor.cpuSeconds,
        floorCpuSeconds: writeFloor.cpuSeconds,
        // CPU seconds of this process and of s3rver's, for the path and for the baseline: when s3rver is
        // near `seconds`, the stand-in (one core, MD5 of every upload) is what bounds the path.
        cpuSeconds: cpu(pathCpu),
        s3CpuSeconds: Number((s3Path - s3Baseline).toFixed(2)),
        baselineSeconds: Number(baseline.seconds.toFixed(2)),
        baselineCpuSeconds: baselineCpu,
        baselineS3CpuSeconds: Number(median((r) => r.s3CpuSeconds).toFixed(2)),
        peakRssMiB,
        s3PeakRssMiB,
      }),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
