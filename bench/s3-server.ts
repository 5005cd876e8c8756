/**
 * s3rver in a process of its own, so that a benchmark's peak RSS and CPU are its own and not shared with
 * the S3 stand-in. Prints `{"endpoint": ...}` once listening; stops when its stdin closes.
 *
 *   tsx bench/s3-server.ts DIRECTORY BUCKET
 */
import { startS3 } from '../local/stand-ins';

const [directory, bucket] = process.argv.slice(2);
if (!directory || !bucket) throw new Error('usage: s3-server.ts DIRECTORY BUCKET');
const s3 = await startS3(directory, bucket);
console.log(JSON.stringify({ endpoint: s3.endpoint }));
process.stdin.resume();
process.stdin.on('end', () => {
  void s3.stop().then(() => {
    console.log(JSON.stringify({ peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024) }));
    process.exit(0);
  });
});
