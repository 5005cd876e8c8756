import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, ListObjectsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadWork } from '../../infra/works';
import { synthesizeDefinition } from '../../local/definition';
import { estimate } from '../../local/estimate';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { ManualTime } from '../support/manual-time';
import { outputIds } from '../support/run-checks';

/**
 * A work that sends `tools: []` for some records, which OpenAI refuses with a 400: with Prepare's check
 * those records end in errors at prepare, naming `tools`, and are never sent; with the check off, the
 * same records end in errors from OpenAI's error file (the emulator's, which answers as OpenAI does).
 */

const RECORDS = Array.from({ length: 8 }, (_, i) => ({
  id: `r${i}`,
  content: `question ${i}`,
  ...(i % 3 === 1 ? { noTools: true } : {}),
}));
const REFUSED = ['r1', 'r4', 'r7'];
const ACCEPTED = RECORDS.map((r) => r.id).filter((id) => !REFUSED.includes(id));

let dir: string;
let env: LocalEnvironment;
const time = new ManualTime({ start: Date.UTC(2026, 10, 25) });

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-request-bodies-'));
  env = await startLocalEnvironment(
    dir,
    time.emulator({ validationMs: 1000, requestsPerSecond: 100, finalizingMs: 1000, seed: 9 }),
  );
  const body = `${RECORDS.map((r) => JSON.stringify(r)).join('\n')}\n`;
  await env.s3.client.send(
    new PutObjectCommand({ Bucket: env.s3.bucket, Key: 'inputs/tools.jsonl', Body: body }),
  );
});

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function errorsOf(runId: string): Promise<Record<string, unknown>[]> {
  const { client, bucket } = env.s3;
  const listed = await client.send(
    new ListObjectsCommand({ Bucket: bucket, Prefix: `runs/${runId}/errors/` }),
  );
  const errors: Record<string, unknown>[] = [];
  for (const object of listed.Contents ?? []) {
    const got = await client.send(new GetObjectCommand({ Bucket: bucket, Key: object.Key }));
    for (const line of ((await got.Body?.transformToString()) ?? '').split('\n'))
      if (line) errors.push(JSON.parse(line));
  }
  return errors.sort((a, b) => String(a.id).localeCompare(String(b.id)));
}

/** The custom_ids of every batch input file the emulator received. */
async function sentIds(): Promise<string[]> {
  const emulator = env.emulator;
  if (!emulator) throw new Error('no emulator');
  const ids: string[] = [];
  for (const file of emulator.files.list('batch')) {
    const chunks: Buffer[] = [];
    for await (const chunk of emulator.files.read(file.id)) chunks.push(chunk as Buffer);
    for (const line of Buffer.concat(chunks).toString('utf8').split('\n'))
      if (line) ids.push((JSON.parse(line) as { custom_id: string }).custom_id);
  }
  return ids.sort();
}

async function runWork(fixture: string, runId: string) {
  const loaded = await loadWork(new URL(`../fixtures/works/${fixture}.ts`, import.meta.url).pathname);
  const { definition } = await synthesizeDefinition(loaded);
  return runLocally(env, loaded, 'inputs/tools.jsonl', runId, time.runOptions(env), { definition });
}

describe('request bodies OpenAI refuses', () => {
  it('are refused at prepare, naming tools, and never sent', async () => {
    const result = await runWork('empty-tools', 'checked');
    expect(result.output).toMatchObject({ summary: { records: 8, outputs: 5, errors: 3, balanced: true } });
    expect(await outputIds(env, 'checked')).toEqual(ACCEPTED);
    const errors = await errorsOf('checked');
    expect(errors.map((e) => e.id)).toEqual(REFUSED);
    for (const error of errors) {
      expect(error).toMatchObject({
        stage: 'request',
        code: 'invalid_request_body',
        statusCode: null,
        batchId: null,
        response: { error: { code: 'empty_array', param: 'tools' } },
      });
      expect(error.message).toContain("param 'tools'");
      expect(error.message).toContain(
        "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty array instead.",
      );
    }
    expect(await sentIds()).toEqual(ACCEPTED);
  });

  it('end in errors from OpenAI when the check is off: the same records, the same rule', async () => {
    const result = await runWork('empty-tools-unchecked', 'unchecked');
    expect(result.output).toMatchObject({ summary: { records: 8, outputs: 5, errors: 3, balanced: true } });
    expect(await outputIds(env, 'unchecked')).toEqual(ACCEPTED);
    const errors = await errorsOf('unchecked');
    expect(errors.map((e) => e.id)).toEqual(REFUSED);
    for (const error of errors) {
      expect(error).toMatchObject({
        stage: 'openai',
        code: 'empty_array',
        statusCode: 400,
        batchId: expect.stringMatching(/^batch_/),
        response: { error: { code: 'empty_array', param: 'tools', type: 'invalid_request_error' } },
      });
      expect(error.message).toContain("Invalid 'tools': empty array.");
    }
  });

  it('are reported by estimate, with their line, param and OpenAI message', async () => {
    const file = join(dir, 'tools.jsonl');
    writeFileSync(file, `${RECORDS.map((r) => JSON.stringify(r)).join('\n')}\n`);
    const loaded = await loadWork(new URL('../fixtures/works/empty-tools.ts', import.meta.url).pathname);
    const figures = await estimate(loaded.work, file);
    expect(figures).toMatchObject({ records: 8, requests: 5, refused: 3 });
    expect(figures.invalidBodies).toEqual({
      count: 3,
      first: REFUSED.map((id) => ({
        line: Number(id.slice(1)) + 1,
        id,
        code: 'empty_array',
        param: 'tools',
        message:
          "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty array instead.",
      })),
    });
  });
});
