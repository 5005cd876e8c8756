/**
 * `npm run bench`: the benchmarks, each in its own process. `--quick` uses smaller datasets.
 * Figures are printed as a table; see BENCHMARKS.md for recorded runs.
 */
import { execFileSync } from 'node:child_process';

const quick = process.argv.includes('--quick');
const sizes = quick ? [100e6, 300e6] : [100e6, 1e9];

interface MemoryFigure {
  datasetBytes: number;
  records: number;
  parts: number;
  seconds: number;
  recordsPerSecond: number;
  peakRssMiB: number;
}

const figures: MemoryFigure[] = sizes.map((size) => {
  const out = execFileSync(process.execPath, ['--import', 'tsx', 'bench/prepare-memory.ts', String(size)], {
    encoding: 'utf8',
  });
  return JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as MemoryFigure;
});

console.log('prepare (reader -> upload -> builder -> chunker), generated 1 KB chat records:');
console.table(
  figures.map((f) => ({
    dataset: `${f.datasetBytes / 1e6} MB`,
    records: f.records,
    parts: f.parts,
    seconds: f.seconds,
    'records/s': f.recordsPerSecond,
    'peak RSS MiB': f.peakRssMiB,
  })),
);
const [small, large] = figures;
if (small && large) {
  const ratio = large.peakRssMiB / small.peakRssMiB;
  console.log(`peak RSS large/small: ${ratio.toFixed(2)} (goal: at most 1.5)`);
}

interface EmulatorFigure {
  requests: number;
  status: string;
  inputMB: number;
  outputMB: number;
  seconds: number;
  emulatorPeakRssMiB: number;
}

const emulatorFigures = [200, 3500].map((bytes) => {
  const out = execFileSync(process.execPath, ['--import', 'tsx', 'bench/emulator-batch.ts', String(bytes)], {
    encoding: 'utf8',
  });
  return JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as EmulatorFigure;
});
console.log(
  '\nemulator: one 50,000-request chat batch, streamed upload and download with the official client:',
);
console.table(emulatorFigures);

const cost = JSON.parse(
  execFileSync(process.execPath, ['--import', 'tsx', 'bench/orchestration-cost.ts'], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .at(-1) ?? '{}',
) as {
  usdPer1MRequests: number;
  naiveUsdPer1MRequests: number;
  ticks: number;
  transitions: number;
  simulatedHours: number;
};
console.log(
  '\norchestration cost (AWS side) of a million requests: 20 batches OpenAI takes 20 hours to finish:',
);
console.table({
  reconciler: {
    'USD per 1M requests': cost.usdPer1MRequests,
    ticks: cost.ticks,
    'state transitions': cost.transitions,
  },
  'naive (Map branch per batch, 1-minute polls)': { 'USD per 1M requests': cost.naiveUsdPer1MRequests },
});
console.log(`goal: at most $0.05 per million requests (simulated ${cost.simulatedHours} h)`);

const paths = ['prepare', 'collect'].map(
  (mode) =>
    JSON.parse(
      execFileSync(process.execPath, ['--import', 'tsx', 'bench/paths.ts', mode, String(100e6)], {
        encoding: 'utf8',
      })
        .trim()
        .split('\n')
        .at(-1) ?? '{}',
    ) as {
      mode: string;
      records: number;
      recordsPerSecond: number;
      baselineRatio: number;
      peakRssMiB: number;
    },
);
console.log(
  '\nprepare and collect through S3 (s3rver in the same process), 100 MB, beside a raw read of the same objects:',
);
console.table(
  paths.map((p) => ({
    path: p.mode,
    records: p.records,
    'records/s': p.recordsPerSecond,
    'ratio to raw read': p.baselineRatio,
    'peak RSS MiB': p.peakRssMiB,
  })),
);
console.log('goal: a ratio of at least 0.5 (see BENCHMARKS.md for what bounds it)');
