/**
 * The heap-flags start wrapper, as Lambda runs it: unpacked from the layer's archive by a real `unzip`
 * (or Python's zipfile where unzip is missing), then given the command line of a Lambda start script
 * and a real Node.js, whose heap limit says which flags held.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  executableZip,
  HEAP_WRAPPER_NAME,
  HEAP_WRAPPER_SCRIPT,
  heapWrapperArchive,
} from '../../infra/heap-wrapper';
import { DROPPED_HEAP_FLAGS_ENV } from '../../infra/step-memory';

const has = (command: string, ...args: string[]) =>
  spawnSync(command, args, { stdio: 'ignore' }).status === 0;
const hasUnzip = has('unzip', '-v');

/**
 * Unpacks an archive with a zip reader that is not this project's: Info-ZIP's unzip, or else Python's
 * zipfile, giving each file the Unix mode the archive records, as unzip (and Lambda) do.
 */
function unpack(archive: string, into: string): void {
  if (hasUnzip) {
    execFileSync('unzip', ['-q', '-o', archive, '-d', into]);
    return;
  }
  execFileSync('python3', [
    '-c',
    `import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as archive:
    for info in archive.infolist():
        path = archive.extract(info, sys.argv[2])
        os.chmod(path, (info.external_attr >> 16) & 0o7777)`,
    archive,
    into,
  ]);
}

let dir: string;
let wrapper: string;
let probe: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'heap-wrapper-'));
  const archive = heapWrapperArchive(dir);
  unpack(archive, join(dir, 'opt'));
  wrapper = join(dir, 'opt', HEAP_WRAPPER_NAME);
  probe = join(dir, 'a folder', 'probe.mjs');
  execFileSync('mkdir', ['-p', join(dir, 'a folder')]);
  writeFileSync(
    probe,
    `import { getHeapStatistics } from 'node:v8';
console.log(JSON.stringify({
  heapLimit: getHeapStatistics().heap_size_limit,
  execArgv: process.execArgv,
  argv: process.argv.slice(2),
  dropped: process.env.${DROPPED_HEAP_FLAGS_ENV} ?? null,
}));
`,
  );
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Probe {
  heapLimit: number;
  execArgv: string[];
  argv: string[];
  dropped: string | null;
}

/** Runs the probe as `shell wrapper node ARGS probe EXTRA` (the file itself where shell is null). */
function throughWrapper(
  shell: readonly string[] | null,
  nodeOptions: string,
  args: readonly string[],
  extra: readonly string[] = [],
): Probe {
  const command = [wrapper, process.execPath, ...args, probe, ...extra];
  const [file, ...rest] = shell ? [...shell, ...command] : command;
  const out = execFileSync(file as string, rest, {
    encoding: 'utf8',
    env: { ...process.env, NODE_OPTIONS: nodeOptions },
  });
  return JSON.parse(out) as Probe;
}

/** The heap limit of a Node started with these NODE_OPTIONS and this command line, without the wrapper. */
function heapLimitOf(nodeOptions: string, args: readonly string[] = []): number {
  const out = execFileSync(process.execPath, [...args, probe], {
    encoding: 'utf8',
    env: { ...process.env, NODE_OPTIONS: nodeOptions },
  });
  return (JSON.parse(out) as Probe).heapLimit;
}

// The command line of the nodejs18.x image's start script for a 1,024 MB function.
const LAMBDA_ARGS = [
  '--expose-gc',
  '--max-http-header-size',
  '81920',
  '--max-semi-space-size=51',
  '--max-old-space-size=922',
];
const PREPARE_OPTIONS = '--enable-source-maps --max-old-space-size=160 --max-semi-space-size=16';

describe('the heap-flags wrapper archive', () => {
  it('holds the script alone, as an executable file, readable by another zip reader', () => {
    expect(readFileSync(wrapper, 'utf8')).toBe(HEAP_WRAPPER_SCRIPT);
    expect(statSync(wrapper).mode & 0o777).toBe(0o755);
    if (hasUnzip) {
      const listing = execFileSync('unzip', ['-Z', heapWrapperArchive(dir)], { encoding: 'utf8' });
      expect(listing).toMatch(new RegExp(`^-rwxr-xr-x .* ${HEAP_WRAPPER_NAME}$`, 'm'));
      expect(listing).toMatch(/number of entries: 1/);
    }
  });

  it('is the same bytes every time, and changes with the script (the asset hash follows the script)', () => {
    const script = Buffer.from(HEAP_WRAPPER_SCRIPT);
    expect(executableZip(HEAP_WRAPPER_NAME, script).equals(executableZip(HEAP_WRAPPER_NAME, script))).toBe(
      true,
    );
    expect(
      executableZip(HEAP_WRAPPER_NAME, Buffer.from(`${HEAP_WRAPPER_SCRIPT}\n`)).equals(
        executableZip(HEAP_WRAPPER_NAME, script),
      ),
    ).toBe(false);
    expect(readFileSync(heapWrapperArchive(dir)).equals(executableZip(HEAP_WRAPPER_NAME, script))).toBe(true);
  });
});

describe('the heap-flags wrapper', () => {
  // The file itself (its #!/bin/sh), and each shell here that Lambda's /bin/sh might be: bash as sh
  // (POSIX mode, as on Amazon Linux 2023), bash, dash.
  const shells = [
    null,
    ...[['bash', '--posix'], ['bash'], ['dash']].filter(([shell, ...flags]) =>
      has(shell as string, ...flags, '-c', 'true'),
    ),
  ];

  it.each(shells)('keeps the heap bounds of NODE_OPTIONS over the start script’s (run by %s)', (shell) => {
    const expected = heapLimitOf(PREPARE_OPTIONS);
    expect(expected).not.toBe(heapLimitOf(PREPARE_OPTIONS, LAMBDA_ARGS));
    const run = throughWrapper(shell, PREPARE_OPTIONS, LAMBDA_ARGS);
    expect(run.heapLimit).toBe(expected);
    expect(run.execArgv).toEqual(['--expose-gc', '--max-http-header-size', '81920']);
    expect(run.dropped).toBe('--max-semi-space-size=51 --max-old-space-size=922');
  });

  it.each(shells)(
    'removes only the flags NODE_OPTIONS sets, in either spelling and form (run by %s)',
    (shell) => {
      const tick = '--enable-source-maps --max-semi-space-size=16';
      const args = ['--expose-gc', '--max-semi-space-size', '51', '--max_old_space_size=922'];
      const run = throughWrapper(shell, tick, args);
      expect(run.execArgv).toEqual(['--expose-gc', '--max_old_space_size=922']);
      expect(run.dropped).toBe('--max-semi-space-size 51');
      expect(run.heapLimit).toBe(heapLimitOf(tick, ['--max-old-space-size=922']));
    },
  );

  it('knows a flag in every spelling Node takes, in NODE_OPTIONS and on the command line', () => {
    const options = '"--max_old-space-size=160" --max-semi_space-size=16';
    const args = ['-max-old-space-size=922', '--max_semi_space_size', '51', '--expose-gc'];
    const run = throughWrapper(null, options, args);
    expect(run.execArgv).toEqual(['--expose-gc']);
    expect(run.dropped).toBe('-max-old-space-size=922 --max_semi_space_size 51');
    expect(run.heapLimit).toBe(heapLimitOf(options));
  });

  it('removes nothing where NODE_OPTIONS sets no heap flag, and passes every argument on as it was', () => {
    const args = ['--max-old-space-size=300'];
    const run = throughWrapper(null, '--enable-source-maps', args, ['a b', '*', '', '$HOME']);
    expect(run.execArgv).toEqual(args);
    expect(run.argv).toEqual(['a b', '*', '', '$HOME']);
    expect(run.dropped).toBe('');
    expect(run.heapLimit).toBe(heapLimitOf('', args));
  });

  it('refuses to start without a command, saying so', () => {
    const run = spawnSync(wrapper, [], { encoding: 'utf8' });
    expect(run.status).toBe(64);
    expect(run.stderr).toMatch(/no command to start/);
  });
});
