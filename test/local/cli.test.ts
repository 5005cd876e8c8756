import { spawn } from 'node:child_process';
import { once } from 'node:events';
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
