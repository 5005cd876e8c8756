/**
 * `npm run bench`: the benchmarks, each in its own process, printed as tables (BENCHMARKS.md records a run).
 *
 *   npm run bench [-- --quick] [-- --json FILE]
 *
 * `--quick` (about five minutes) uses 300 MB instead of 1 GB as the large size, 20,000 requests for
 * the end-to-end run, and SCALE_QUICK instead of SCALE_FULL records for the sharded prepare (bench/scale.ts).
 * `--json FILE` writes the headline figures with exactly the keys of BenchFigures.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { SEMI_SPACE_FLAGS } from '../infra/step-memory';
import { lambdaNode, runScript } from './processes';

/**
 * A path's records a second and its ratios to a raw read of the same bytes, in time and in CPU on one core;
 * `jsonCpuRatio` and `floorCpuRatio` are the same CPU ratio for a JSON.parse and a JSON.stringify of each
 * line alone, and with a write of it to S3 through the paths' writer: what a path doing nothing else
 * would reach.
 */
export interface PathFigures {
  recordsPerSecond: number;
  baselineRatio: number;
  cpuRatio: number;
  jsonCpuRatio: number;
  floorCpuRatio: number;
}

/** The headline figures `--json` writes. */
export interface BenchFigures {
  prepare: PathFigures;
  collect: PathFigures;
  memory: { peakRssMiB: { small: number; large: number } };
  cost: { usdPer1MRequests: number; usdPer1MRequestsAt100Parts: number };
  e2e: { secondsPer100kRequests: number };
  /**
   * A sharded prepare through the real steps (Register, the lanes each in its own process, Settle) of short
   * records: 10,000,000 in full mode, SCALE_QUICK (fewer) with `--quick`; `records` says how many. Peak
   * RSS is the largest of the step processes' (each is one Lambda on AWS); checkpointMaxBytes the larger of
   * the run record and the largest lane checkpoint.
   */
  scale: { records: number; prepareSeconds: number; preparePeakRssMiB: number; checkpointMaxBytes: number };
  /** A gzip dataset prepared over many steps of a small time budget: bytes of it read / its size. */
  gzip: { bytesReadRatio: number };
  /**
   * A whole local run over a prefix of small objects (3 records each; 5,000 of them, 1,000 with `--quick`):
   * packed into shards, its batches follow the dataset's bytes, not its object count.
   */
  smallObjects: { objects: number; shards: number; batches: number; seconds: number };
}

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const jsonAt = args.indexOf('--json');
const jsonFile = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
if (jsonAt >= 0 && !jsonFile) throw new Error('--json needs a file name');
const SMALL = 100e6;
const LARGE = quick ? 300e6 : 1e9;
const E2E_REQUESTS = quick ? 20_000 : 100_000;
const SMALL_OBJECTS = quick ? 1000 : 5000;
/** Records of the sharded prepare; quick takes fewer to stay within about five minutes in all. */
const SCALE_FULL = 10_000_000;
const SCALE_QUICK = 1_000_000;
const SCALE_RECORDS = quick ? SCALE_QUICK : SCALE_FULL;
/** Records of the gzip prepare (one shard, one lane, a 250 ms budget a step). */
const GZIP_RECORDS = quick ? 200_000 : 1_000_000;
const mb = (bytes: number) => `${bytes / 1e6} MB`;

interface PathFigure {
  node: string;
  mode: 'prepare' | 'collect';
  kind: string;
  bytes: number;
  recordBytes: number;
  records: number;
  seconds: number;
  recordsPerSecond: number;
  baselineLinesPerSecond: number;
  baselineRatio: number;
  cpuRatio: number;
  jsonCpuRatio: number;
  floorCpuRatio: number;
  cpuSeconds: number;
  s3CpuSeconds: number;
  peakRssMiB: number;
  s3PeakRssMiB: number;
}

// On the functions' Node (Lambda's Node 24 where .tools/node24 has it), with their young generation. Not
// with Prepare's old-space bound: under tsx, whose code the heap holds too, it cost prepare 20 to 21 µs a
// record against 15 to 16 (bench/scale.ts measures it as the functions run it, bundled: a few % there).
const path = (mode: 'prepare' | 'collect', bytes: number, kind = 'chat', recordBytes = 1000) =>
  runScript<PathFigure>(
    'paths.ts',
    [mode, String(bytes), kind, String(recordBytes)],
    lambdaNode(),
    SEMI_SPACE_FLAGS,
  );
const paths: PathFigure[] = [
  path('prepare', SMALL),
  path('prepare', LARGE),
  path('collect', SMALL),
  path('collect', LARGE),
  path('prepare', SMALL, 'embed'),
  path('collect', SMALL, 'embed'),
  // The same bytes in 10 KB records: what a record costs beside what a byte costs.
  path('prepare', SMALL, 'chat', 10_000),
];
console.log(
  `prepare and collect through S3 (s3rver in its own process), generated 1 KB records (and 10 KB in the last row), beside a raw read of the same objects in the same process, on Node ${paths[0]?.node}:`,
);
console.table(
  paths.map((p) => ({
    path: `${p.mode} (${p.kind}${p.recordBytes === 1000 ? '' : `, ${p.recordBytes / 1000} KB records`})`,
    dataset: mb(p.bytes),
    records: p.records,
    seconds: p.seconds,
    'records/s': p.recordsPerSecond,
    'raw read lines/s': p.baselineLinesPerSecond,
    'ratio to raw read': p.baselineRatio,
    'ratio, CPU': p.cpuRatio,
    'JSON only, CPU': p.jsonCpuRatio,
    'JSON and write, CPU': p.floorCpuRatio,
    'CPU s': p.cpuSeconds,
    's3rver CPU s': p.s3CpuSeconds,
    'peak RSS MiB': p.peakRssMiB,
  })),
);
/** The headline figures: chat over 1 KB records. */
const headline = (p: PathFigure) => p.kind === 'chat' && p.recordBytes === 1000;
const peakAt = (bytes: number) =>
  Math.max(...paths.filter((p) => p.bytes === bytes && headline(p)).map((p) => p.peakRssMiB));
const memory = { small: peakAt(SMALL), large: peakAt(LARGE) };
console.log(
  `peak RSS: ${memory.small} MiB at ${mb(SMALL)}, ${memory.large} MiB at ${mb(LARGE)} (${(memory.large / memory.small).toFixed(2)}x; goal: at most 256 MiB at 1 GB and 1.5x)`,
);
console.log(
  'goal: a ratio of at least 0.25 (issue 16), 0.5 in time; "ratio, CPU" compares CPU a record on one core; "JSON only" and "JSON and write" are the same for a JSON.parse and a JSON.stringify of each line, alone and with its write to S3: what a path doing nothing else would reach (see BENCHMARKS.md for what bounds it)',
);

const ceiling = runScript<{ records: number; seconds: number; recordsPerSecond: number; peakRssMiB: number }>(
  'prepare-memory.ts',
  [String(SMALL)],
  lambdaNode(),
  SEMI_SPACE_FLAGS,
);
console.log(
  `\nprepare without S3 (reader -> upload hook -> builder -> chunker, parts counted), ${mb(SMALL)}: ${ceiling.recordsPerSecond} records/s`,
);

interface EmulatorFigure {
  requests: number;
  status: string;
  inputMB: number;
  outputMB: number;
  seconds: number;
  emulatorPeakRssMiB: number;
}
const emulatorFigures = (quick ? [200] : [200, 3500]).map((bytes) =>
  runScript<EmulatorFigure>('emulator-batch.ts', [String(bytes)]),
);
console.log(
  '\nemulator: one 50,000-request chat batch, streamed upload and download with the official client:',
);
console.table(emulatorFigures);

interface CostFigure {
  usdPer1MRequests: number;
  naiveUsdPer1MRequests: number;
  ticks: number;
  transitions: number;
  simulatedHours: number;
  webhookDeliveries: number;
  wakes: number;
  usdPer1MRequestsByService: Record<string, number>;
}
const cost = runScript<CostFigure>('orchestration-cost.ts', []);
const hooked = runScript<CostFigure>('orchestration-cost.ts', ['--webhooks']);
// More parts than maxActiveBatches: 5M requests in 100 parts, 20 at a time, five waves of 20 hours.
const waves = runScript<CostFigure>('orchestration-cost.ts', ['--parts', '100']);
console.log(
  '\norchestration cost (AWS side) of a million requests: 20 batches OpenAI takes 20 hours to finish:',
);
console.table({
  'reconciler, polling (30 s to 15 min)': {
    'USD per 1M requests': cost.usdPer1MRequests,
    ticks: cost.ticks,
    'state transitions': cost.transitions,
  },
  'reconciler, webhooks (polls an hour apart)': {
    'USD per 1M requests': hooked.usdPer1MRequests,
    ticks: hooked.ticks,
    'state transitions': hooked.transitions,
    'webhook deliveries': hooked.webhookDeliveries,
    wakes: hooked.wakes,
  },
  'naive (Map branch per batch, 1-minute polls)': { 'USD per 1M requests': cost.naiveUsdPer1MRequests },
});
console.log(`goal: at most $0.05 per million requests (simulated ${cost.simulatedHours} h)`);
console.log(
  `\n5M requests in 100 parts, 20 in flight at a time (simulated ${waves.simulatedHours} h): $${waves.usdPer1MRequests} per million requests, ${waves.ticks} ticks, ${waves.transitions} state transitions (goal: at most $0.02)`,
);

const e2e = runScript<{ requests: number; seconds: number; secondsPer100kRequests: number }>('e2e.ts', [
  String(E2E_REQUESTS),
]);
console.log(
  `\nend to end, local, emulator at full speed: ${e2e.requests} requests in ${e2e.seconds} s, ${e2e.secondsPer100kRequests} s per 100,000`,
);

const small = runScript<{
  objects: number;
  shards: number;
  batches: number;
  intermediateObjects: number;
  seconds: number;
}>('small-objects.ts', [String(SMALL_OBJECTS)]);
console.log(
  `\na prefix of ${small.objects} small objects (3 records each), end to end: ${small.shards} shard(s), ${small.batches} batch(es), ${small.intermediateObjects} intermediate objects, ${small.seconds} s`,
);

interface ScaleFigure {
  records: number;
  shards: number;
  lanes: number;
  parts: number;
  laneSteps: number;
  settleSteps: number;
  seconds: number;
  registerSeconds: number;
  lanesSeconds: number;
  settleSeconds: number;
  recordsPerSecond: number;
  laneRecordsPerSecond: number;
  peakRssMiB: number;
  memory: Record<'register' | 'lane' | 'settle', { peakRssMiB: number }>;
  checkpointMaxBytes: number;
  state: Record<string, { count: number; bytes: number; maxBytes: number }>;
  datasetBytes: number;
  bytesReadRatio: number;
  stepNode: string;
}
const scale = runScript<ScaleFigure>('scale.ts', [String(SCALE_RECORDS)]);
const zipped = runScript<ScaleFigure>('scale.ts', ['--gzip', String(GZIP_RECORDS)]);
console.log(
  `\nsharded prepare of short records (Register, the lanes and Settle each in its own process, as in Lambdas, on Node ${scale.stepNode}; s3rver and DynamoDB Local beside):`,
);
console.table(
  [scale, zipped].map((f, i) => ({
    dataset: `${i === 0 ? 'JSONL' : 'gzip'} ${mb(f.datasetBytes)}`,
    records: f.records,
    'shards/lanes': `${f.shards}/${f.lanes}`,
    steps: f.laneSteps + f.settleSteps + 1,
    seconds: f.seconds,
    'register/lanes/settle s': `${f.registerSeconds}/${f.lanesSeconds}/${f.settleSeconds}`,
    'records/s': f.recordsPerSecond,
    'peak RSS MiB (register/lane/settle)': `${f.memory.register.peakRssMiB}/${f.memory.lane.peakRssMiB}/${f.memory.settle.peakRssMiB}`,
    'largest checkpoint bytes': f.checkpointMaxBytes,
    'id files': f.state['ids/*.ids']?.count ?? 0,
    'id file MB': mb(Math.round((f.state['ids/*.ids']?.bytes ?? 0) / 1e4) * 1e4),
    'bytes read / size': f.bytesReadRatio,
  })),
);
console.log(
  `goal: peak RSS at most 256 MiB a step process, checkpoints O(1) or O(parts), gzip bytes read at most 1.2 of the object${quick ? ` (quick: ${SCALE_QUICK.toLocaleString('en-US')} records, not ${SCALE_FULL.toLocaleString('en-US')})` : ''}`,
);

const large = (mode: string) => {
  const figure = paths.find((p) => p.mode === mode && p.bytes === LARGE && headline(p));
  if (!figure) throw new Error(`no ${mode} figure`);
  return {
    recordsPerSecond: figure.recordsPerSecond,
    baselineRatio: figure.baselineRatio,
    cpuRatio: figure.cpuRatio,
    jsonCpuRatio: figure.jsonCpuRatio,
    floorCpuRatio: figure.floorCpuRatio,
  };
};
const figures: BenchFigures = {
  prepare: large('prepare'),
  collect: large('collect'),
  memory: { peakRssMiB: memory },
  cost: { usdPer1MRequests: cost.usdPer1MRequests, usdPer1MRequestsAt100Parts: waves.usdPer1MRequests },
  e2e: { secondsPer100kRequests: e2e.secondsPer100kRequests },
  scale: {
    records: scale.records,
    prepareSeconds: scale.seconds,
    preparePeakRssMiB: scale.peakRssMiB,
    checkpointMaxBytes: scale.checkpointMaxBytes,
  },
  gzip: { bytesReadRatio: zipped.bytesReadRatio },
  smallObjects: {
    objects: small.objects,
    shards: small.shards,
    batches: small.batches,
    seconds: small.seconds,
  },
};
if (jsonFile) {
  mkdirSync(dirname(jsonFile), { recursive: true });
  writeFileSync(jsonFile, `${JSON.stringify(figures, null, 2)}\n`);
  console.log(`\nfigures written to ${jsonFile}`);
}
