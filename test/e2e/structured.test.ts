import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, ListObjectsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadWork } from '../../infra/works';
import { synthesizeDefinition } from '../../local/definition';
import { OUTPUT_MARKERS } from '../../local/emulator/structured';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { Verdict } from '../fixtures/works/structured-answer';
import { clientFor } from '../support/emulator';
import { ManualTime } from '../support/manual-time';
import { partsPaidTwice } from '../support/run-checks';

/**
 * Works with an outputSchema, through the synthesized state machine against the emulator, on chat and on
 * responses: every output's `parsed` matches the schema, and each kind of unusable answer (not JSON, not
 * the schema, refused, cut off) ends in errors with its code, the raw content and the reason. With
 * maxOutputRetries 1, such a request is sent once more in a new part (no part paid twice), and one that
 * comes back good the second time is an output.
 */

let dir: string;
let env: LocalEnvironment;
const time = new ManualTime({ start: Date.UTC(2026, 10, 25) });

/** Record ids whose text carries a marker, and the error code each ends with. */
const CHAT_MARKED: Record<string, [marker: string, code: string | null]> = {
  c010: [OUTPUT_MARKERS.invalidJson, 'invalid_output'],
  c020: [OUTPUT_MARKERS.wrongShape, 'invalid_output'],
  c030: [OUTPUT_MARKERS.refusal, 'refusal'],
  c040: [OUTPUT_MARKERS.truncated, 'output_truncated'],
  c050: [OUTPUT_MARKERS.invalidJsonOnce, null],
};
const RESPONSES_MARKED: Record<string, [marker: string, code: string | null]> = {
  s03: [OUTPUT_MARKERS.invalidJson, 'invalid_output'],
  s06: [OUTPUT_MARKERS.refusal, 'refusal'],
  s09: [OUTPUT_MARKERS.truncated, 'output_truncated'],
  s12: [OUTPUT_MARKERS.wrongShape, 'invalid_output'],
};

function dataset(prefix: string, count: number, marked: Record<string, [string, string | null]>): string {
  const width = prefix === 'c' ? 3 : 2;
  return Array.from({ length: count }, (_, i) => {
    const id = `${prefix}${String(i).padStart(width, '0')}`;
    const marker = marked[id]?.[0];
    return JSON.stringify({ id, text: `review ${i}: the service was fine${marker ? ` ${marker}` : ''}` });
  }).join('\n');
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-structured-'));
  env = await startLocalEnvironment(
    dir,
    time.emulator({ validationMs: 1000, requestsPerSecond: 100, finalizingMs: 1000, seed: 15 }),
  );
  for (const [key, body] of [
    ['inputs/chat.jsonl', dataset('c', 120, CHAT_MARKED)],
    ['inputs/responses.jsonl', dataset('s', 30, RESPONSES_MARKED)],
  ] as const)
    await env.s3.client.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: key, Body: body }));
});

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function linesOf(prefix: string): Promise<Record<string, unknown>[]> {
  const { client, bucket } = env.s3;
  const listed = await client.send(new ListObjectsCommand({ Bucket: bucket, Prefix: prefix }));
  const found: Record<string, unknown>[] = [];
  for (const object of listed.Contents ?? []) {
    const got = await client.send(new GetObjectCommand({ Bucket: bucket, Key: object.Key }));
    for (const line of ((await got.Body?.transformToString()) ?? '').split('\n'))
      if (line) found.push(JSON.parse(line));
  }
  return found.sort((a, b) => String(a.id).localeCompare(String(b.id)));
}

/** How many batch input files on the emulator carried each custom_id. */
async function timesSent(): Promise<Map<string, number>> {
  const emulator = env.emulator;
  if (!emulator) throw new Error('no emulator');
  const sent = new Map<string, number>();
  for (const file of emulator.files.list('batch')) {
    const chunks: Buffer[] = [];
    for await (const chunk of emulator.files.read(file.id)) chunks.push(chunk as Buffer);
    for (const line of Buffer.concat(chunks).toString('utf8').split('\n')) {
      if (!line) continue;
      const id = (JSON.parse(line) as { custom_id: string }).custom_id;
      sent.set(id, (sent.get(id) ?? 0) + 1);
    }
  }
  return sent;
}

async function run(fixture: string, input: string, runId: string) {
  const loaded = await loadWork(new URL(`../fixtures/works/${fixture}.ts`, import.meta.url).pathname);
  const { definition } = await synthesizeDefinition(loaded);
  return runLocally(env, loaded, input, runId, time.runOptions(env), { definition });
}

function expectOutputsMatchSchema(outputs: Record<string, unknown>[]): void {
  for (const output of outputs) {
    const parsed = Verdict.safeParse(output.parsed);
    expect(parsed.success, `output ${String(output.id)}: ${parsed.error?.message}`).toBe(true);
    expect(output.label).toBe(parsed.data?.label);
  }
}

function expectErrors(
  errors: Record<string, unknown>[],
  marked: Record<string, [string, string | null]>,
): void {
  const expected = Object.entries(marked)
    .filter(([, [, code]]) => code !== null)
    .map(([id, [, code]]) => ({ id, code }));
  expect(errors.map((e) => ({ id: e.id, code: e.code }))).toEqual(expected);
  for (const error of errors) {
    expect(error).toMatchObject({ status: 'failed', stage: 'openai', statusCode: 200 });
    expect(error.line).toBe(Number(String(error.id).slice(1)) + 1);
    expect(error.message).toMatch(new RegExp(`^line ${String(error.line)}: request "${String(error.id)}": `));
    expect(typeof error.content).toBe('string');
    expect(error.response).toEqual(expect.any(Object));
  }
}

describe('structured outputs end to end', () => {
  it('chat: 120 records, outputs parsed against the schema, each failure kind in errors, one retry each', async () => {
    const result = await run('structured-chat', 'inputs/chat.jsonl', 'chat');
    expect(result.output).toMatchObject({
      summary: { records: 120, outputs: 116, errors: 4, balanced: true },
    });
    const outputs = await linesOf('runs/chat/outputs/');
    expect(outputs).toHaveLength(116);
    expectOutputsMatchSchema(outputs);
    // Answered not-JSON the first time, good the second: an output.
    expect(outputs.some((o) => o.id === 'c050')).toBe(true);
    expectErrors(await linesOf('runs/chat/errors/'), CHAT_MARKED);

    const sent = await timesSent();
    for (const id of Object.keys(CHAT_MARKED)) expect(sent.get(id), id).toBe(2);
    expect(sent.get('c000')).toBe(1);
    expect(sent.get('c119')).toBe(1);
    if (!env.emulator) throw new Error('no emulator');
    expect(await partsPaidTwice(clientFor(env.emulator), 'chat')).toBe(0);
  }, 120_000);

  it('responses: outputs parsed against the schema, each failure kind in errors, none sent again', async () => {
    const result = await run('structured-responses', 'inputs/responses.jsonl', 'responses');
    expect(result.output).toMatchObject({ summary: { records: 30, outputs: 26, errors: 4, balanced: true } });
    const outputs = await linesOf('runs/responses/outputs/');
    expectOutputsMatchSchema(outputs);
    expectErrors(await linesOf('runs/responses/errors/'), RESPONSES_MARKED);
    const sent = await timesSent();
    for (const id of Object.keys(RESPONSES_MARKED)) expect(sent.get(id), id).toBe(1);
  }, 120_000);
});
