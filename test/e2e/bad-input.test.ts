import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ScanCommand } from '@aws-sdk/client-dynamodb';
import { GetObjectCommand, ListObjectsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadWork } from '../../infra/works';
import { type Definition, synthesizeDefinition } from '../../local/definition';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { outputIds } from '../support/run-checks';

/**
 * Bad input of every kind in one dataset, through the whole state machine: each bad line or record ends
 * in errors with its line and a reason, the good ones complete, nothing is lost. The same run is the
 * security check: the API key and the records' contents are looked for in every log line, every state
 * the execution passed, every notification, every DynamoDB item and every S3 object.
 */

const SENTINEL = `SENTINEL-${randomBytes(6).toString('hex')}`;
const KEY = `sk-proj-TESTKEY-${randomBytes(12).toString('hex')}`;
const good = (i: number) => JSON.stringify({ id: `g${i}`, content: `${SENTINEL} question ${i}` });
const LINES: (string | Buffer)[] = [
  ...Array.from({ length: 20 }, (_, i) => good(i)), // lines 1-20
  `{"id":"bad json", "content": "${SENTINEL}"`, // 21
  `["${SENTINEL}"]`, // 22
  Buffer.concat([
    Buffer.from('{"id":"u","content":"'),
    Buffer.from([0xff, 0xfe]),
    Buffer.from(`${SENTINEL}"}`),
  ]), // 23
  JSON.stringify({ content: `${SENTINEL} with no id` }), // 24
  JSON.stringify({ id: 'g1', content: `${SENTINEL} again` }), // 25
  JSON.stringify({ id: 'big', content: `${SENTINEL} ${'x'.repeat(5000)}` }), // 26: a request over 4,096 bytes
  JSON.stringify({ id: 'huge', content: `${SENTINEL} ${'y'.repeat(20_000)}` }), // 27: a line over 8,192 bytes
  JSON.stringify({ id: 'boom1', content: `${SENTINEL} boom` }), // 28: the hook throws
  good(20), // 29
  good(21), // 30
];
const GOOD = [...Array.from({ length: 22 }, (_, i) => `g${i}`)].sort();

let env: LocalEnvironment;
let dir: string;
let loaded: Awaited<ReturnType<typeof loadWork>>;
let definition: Definition;

async function objectText(key: string): Promise<string> {
  const object = await env.s3.client.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: key }));
  return (await object.Body?.transformToString()) ?? '';
}

async function allKeys(): Promise<string[]> {
  const keys: string[] = [];
  let marker: string | undefined;
  for (;;) {
    const page = await env.s3.client.send(
      new ListObjectsCommand({ Bucket: env.s3.bucket, ...(marker ? { Marker: marker } : {}) }),
    );
    keys.push(...(page.Contents ?? []).map((o) => o.Key ?? ''));
    if (!page.IsTruncated) return keys;
    marker = keys.at(-1);
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-bad-input-'));
  env = await startLocalEnvironment(dir, {
    kind: 'emulator',
    options: { validationMs: 20, requestsPerSecond: 20_000, finalizingMs: 10, tickMs: 10, apiKey: KEY },
  });
  loaded = await loadWork(new URL('../fixtures/works/picky.ts', import.meta.url).pathname);
  definition = (await synthesizeDefinition(loaded)).definition;
  const body = Buffer.concat(
    LINES.flatMap((l) => [typeof l === 'string' ? Buffer.from(l) : l, Buffer.from('\n')]),
  );
  await env.s3.client.send(
    new PutObjectCommand({ Bucket: env.s3.bucket, Key: 'inputs/picky/bad.jsonl', Body: body }),
  );
});

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('bad input, and what a run leaves behind', () => {
  const logs: string[] = [];
  const states: string[] = [];
  let notifications = '';

  it('puts each bad line or record in errors with its line and reason, and completes the rest', async () => {
    const result = await runLocally(
      env,
      loaded,
      'inputs/picky/bad.jsonl',
      'picky',
      {
        waitMs: 20,
        log: (message, fields) => logs.push(`${message} ${JSON.stringify(fields ?? {})}`),
        onOutput: (state, output) => states.push(`${state} ${JSON.stringify(output)}`),
      },
      { definition },
    );
    notifications = JSON.stringify(result.notifier.events);
    expect(result.output).toMatchObject({ summary: { records: 30, outputs: 22, errors: 8, balanced: true } });
    expect(await outputIds(env, 'picky')).toEqual(GOOD);

    const errors: { line: number; code: string; message: string }[] = [];
    for (const key of (await allKeys()).filter((k) => k.startsWith('runs/picky/errors/')))
      for (const line of (await objectText(key)).split('\n')) if (line) errors.push(JSON.parse(line));
    const byLine = Object.fromEntries(errors.map((e) => [e.line, e.code]));
    expect(byLine).toEqual({
      21: 'invalid_json',
      22: 'not_an_object',
      23: 'invalid_utf8',
      24: 'invalid_item',
      25: 'duplicate_id',
      26: 'request_too_large',
      27: 'line_too_long',
      28: 'upload_hook_failed',
    });
    expect(errors.find((e) => e.line === 28)?.message).toContain('the hook refused this record');
  });

  it('leaves the API key nowhere, and record contents only in the dataset and the batch input files', async () => {
    expect(logs.length).toBeGreaterThan(5);
    const items = JSON.stringify(
      (await env.dynamo.client.send(new ScanCommand({ TableName: env.dynamo.table }))).Items,
    );
    const places: [string, string][] = [
      ['logs', logs.join('\n')],
      ['states', states.join('\n')],
      ['notifications', notifications],
      ['DynamoDB', items],
    ];
    for (const key of await allKeys()) places.push([`s3://${key}`, await objectText(key)]);
    expect(places.length).toBeGreaterThan(8);
    expect(places.filter(([, text]) => text.includes(KEY)).map(([where]) => where)).toEqual([]);
    // Where record contents may be: the dataset itself and the batch input files made from it.
    const mayHoldContents = (where: string) =>
      where.startsWith('s3://inputs/') || /^s3:\/\/runs\/picky\/requests\//.test(where);
    expect(
      places.filter(([where, text]) => !mayHoldContents(where) && text.includes(SENTINEL)).map(([w]) => w),
    ).toEqual([]);
  });

  const nothing = (key: string) =>
    `No dataset at s3://openai-batch-local/${key}: no such object, and no objects under it as a prefix.`;
  it.each([
    ['a missing object', 'inputs/picky/missing.jsonl', nothing('inputs/picky/missing.jsonl')],
    ['a prefix with no objects', 'inputs/nothing-here/', nothing('inputs/nothing-here/')],
    [
      'an empty dataset',
      'inputs/picky/empty.jsonl',
      'The dataset s3://openai-batch-local/inputs/picky/empty.jsonl is empty: there is nothing to run.',
    ],
  ])(
    'fails a run on %s at Register, naming the location, before anything is sent',
    async (_, key, message) => {
      await env.s3.client.send(
        new PutObjectCommand({ Bucket: env.s3.bucket, Key: 'inputs/picky/empty.jsonl', Body: '' }),
      );
      const runId = `picky-${key.replace(/\W/g, '-')}`;
      await expect(runLocally(env, loaded, key, runId, { waitMs: 20 }, { definition })).rejects.toThrow(
        message,
      );
      expect(await allKeys()).not.toContainEqual(expect.stringContaining(`runs/${runId}/`));
    },
  );
});
