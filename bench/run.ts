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
