import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, ListObjectsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadWork } from '../../infra/works';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { outputIds } from '../support/run-checks';

/**
 * Hook values JSON cannot hold, through the whole state machine: an `upload` item with a cycle and a
 * `download` value with a BigInt each put their one record in errors, with the reason, and the run
 * completes; a `downloadError` value JSON cannot hold writes the plain error instead of losing it.
 */

const IDS = ['a', 'b', 'cycle', 'c', 'big', 'd'];

let env: LocalEnvironment;
let dir: string;

async function lines(prefix: string): Promise<Record<string, unknown>[]> {
  const listed = await env.s3.client.send(new ListObjectsCommand({ Bucket: env.s3.bucket, Prefix: prefix }));
  const found: Record<string, unknown>[] = [];
  for (const object of listed.Contents ?? []) {
    const body = await env.s3.client.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: object.Key }));
    for (const line of ((await body.Body?.transformToString()) ?? '').split('\n'))
      if (line) found.push(JSON.parse(line));
  }
  return found;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-hook-values-'));
  env = await startLocalEnvironment(dir, {
    kind: 'emulator',
    options: { validationMs: 20, requestsPerSecond: 20_000, finalizingMs: 10, tickMs: 10 },
  });
  await env.s3.client.send(
    new PutObjectCommand({
      Bucket: env.s3.bucket,
      Key: 'inputs/hooks.jsonl',
      Body: IDS.map((id) => JSON.stringify({ id, content: `question ${id}` })).join('\n'),
    }),
  );
});

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('hook values JSON cannot hold', () => {
  it('puts the record of a BigInt download and of a cyclic upload item in errors, and completes the rest', async () => {
    const loaded = await loadWork(new URL('../fixtures/works/hook-values.ts', import.meta.url).pathname);
    const result = await runLocally(env, loaded, 'inputs/hooks.jsonl', 'hooks', { waitMs: 20 });
    expect(result.output).toMatchObject({ summary: { records: 6, outputs: 4, errors: 2, balanced: true } });
    expect(await outputIds(env, 'hooks')).toEqual(['a', 'b', 'c', 'd']);

    const errors = await lines('runs/hooks/errors/');
    expect(errors).toHaveLength(2);
    const byId = Object.fromEntries(errors.map((e) => [e.id, e]));
    // The downloadError hook's value held a BigInt too: the plain error item is written, noting why.
    expect(byId.cycle).toMatchObject({ stage: 'request', code: 'upload_hook_failed', line: 3 });
    expect(byId.cycle?.message).toMatch(
      /^line 3: the upload hook returned a value JSON cannot hold: Converting circular structure to JSON.* \(the downloadError hook returned a value JSON cannot hold: Do not know how to serialize a BigInt\)$/s,
    );
    expect(byId.big).toEqual({
      id: 'big',
      code: 'download_hook_failed',
      line: 5,
      message: 'the download hook returned a value JSON cannot hold: Do not know how to serialize a BigInt',
    });
  }, 60_000);
});
