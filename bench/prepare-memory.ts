/**
 * One prepare pass (reader -> upload hook -> builder -> chunker) over a generated dataset of the size
 * given, with sinks that only count; prints its figures as one JSON line. Run in its own process so that
 * its peak RSS is its own.
 */
import { IdRegistry } from '../functions/core/ids';
import { prepareDataset } from '../functions/core/prepare';
import example from '../works/example';
import { chatDataset } from './generate';

const bytes = Number(process.argv[2] ?? 100e6);
let partBytes = 0;
const started = performance.now();
const result = await prepareDataset({
  source: chatDataset(bytes),
  work: example,
  ids: new IdRegistry(),
  parts: {
    write: async (_part, request) => {
      partBytes += request.bytes;
    },
    close: async () => {},
  },
  errors: { write: async () => {} },
});
const seconds = (performance.now() - started) / 1000;
console.log(
  JSON.stringify({
    datasetBytes: bytes,
    records: result.counts.records,
    parts: result.counts.parts,
    partBytes,
    seconds: Number(seconds.toFixed(2)),
    recordsPerSecond: Math.round(result.counts.records / seconds),
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
  }),
);
