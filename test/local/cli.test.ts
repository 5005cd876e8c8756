import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { dirname } from 'node:path';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';

/** Starts `openai-batch ARGS` as a user would, and resolves with the first line matching `pattern`. */
function start(args: string[], pattern: RegExp) {
  const child = spawn(process.execPath, ['bin/openai-batch.js', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const matched = new Promise<RegExpMatchArray>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match = output.match(pattern);
      if (match) resolve(match);
    });
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.once('exit', (code) => reject(new Error(`exited ${code} before printing ${pattern}: ${output}`)));
  });
  return { child, matched, output: () => output };
}

describe('openai-batch emulator', () => {
  it('prints its URL once listening, serves the official client, and stops cleanly on SIGTERM', async () => {
    const { child, matched, output } = start(
      ['emulator', '--port', '0', '--seed', '1'],
      /(http:\/\/127\.0\.0\.1:\d+\/v1)/,
    );
    const [, url] = await matched;
    const client = new OpenAI({ apiKey: 'sk-local', baseURL: url });
    expect((await client.batches.list()).data).toEqual([]);
    child.kill('SIGTERM');
    const [code] = await once(child, 'exit');
    expect(code).toBe(0);
    expect(output()).toContain('SIGTERM: stopping');
  });

  it('refuses a bad option with a message naming it', async () => {
    const child = spawn(process.execPath, ['bin/openai-batch.js', 'emulator', '--fault-rate', '2'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const [code] = await once(child, 'exit');
    expect(code).not.toBe(0);
    expect(stderr).toMatch(/--fault-rate <r>' argument '2' is invalid. must be between 0 and 1/);
  });
});

describe('openai-batch on an old Node.js', () => {
  /** The machine's own Node (20 on these machines): a newcomer's, before they install a newer one. */
  const oldNode = ['/usr/bin/node', '/usr/local/bin/node'].find(
    (path) =>
      existsSync(path) &&
      Number(spawnSync(path, ['-p', 'process.versions.node.split(".")[0]']).stdout.toString().trim()) < 22,
  );

  /** Runs `command` with the old Node first on PATH; resolves with its exit code and output. */
  async function runOld(command: string, args: string[]) {
    if (!oldNode) throw new Error('No Node.js older than 22 at /usr/bin/node or /usr/local/bin/node to try');
    const child = spawn(command, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // its own process group, so that a command that did start can be ended whole
      env: { ...process.env, PATH: `${dirname(oldNode)}:${process.env.PATH ?? ''}` },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    // The code before the check started the command instead: end it and what it started.
    const timer = setTimeout(() => child.pid && process.kill(-child.pid, 'SIGKILL'), 15_000);
    const [code] = await once(child, 'exit');
    clearTimeout(timer);
    return { code, stdout, stderr };
  }
  const message = (version: string) =>
    `openai-batch needs Node.js 22.12 or later; this is ${version}.\n` +
    'Install a current Node.js (https://nodejs.org/, or `nvm install 22`) and run the command again.\n';

  it.each([['--help'], ['emulator', '--port', '0'], ['demo']])(
    'says plainly which Node.js it needs and exits 2 before loading anything (openai-batch %s)',
    async (...args) => {
      const version = spawnSync(oldNode ?? 'node', ['-p', 'process.versions.node'])
        .stdout.toString()
        .trim();
      const { code, stdout, stderr } = await runOld(oldNode ?? 'node', ['bin/openai-batch.js', ...args]);
      expect({ code, stdout, stderr }).toEqual({ code: 2, stdout: '', stderr: message(version) });
    },
  );

  it('npm run demo and npm run emulator on that Node say the same', async () => {
    const version = spawnSync(oldNode ?? 'node', ['-p', 'process.versions.node'])
      .stdout.toString()
      .trim();
    for (const script of ['demo', 'emulator']) {
      const { code, stderr } = await runOld('npm', ['run', '--silent', script]);
      expect(code).not.toBe(0);
      expect(stderr).toContain(message(version));
      expect(stderr).not.toMatch(/withResolvers|\n\s+at /);
    }
  });
});
