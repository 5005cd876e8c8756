import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadWork } from '../../infra/works';
import { type Definition, synthesizeDefinition } from '../../local/definition';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { ManualTime } from '../support/manual-time';
import { type FaultsRecord, RELIABILITY_DIR } from '../support/reliability';
import { outputIds, partsPaidTwice } from '../support/run-checks';
import { injectSdkFaults, type SdkFaultCounts } from '../support/sdk-faults';

/**
 * Faults from outside: OpenAI (the emulator's random faults on every endpoint: 429s, 500s, 503s, slow
 * answers, connections dropped before and after it acted), S3 and DynamoDB (throttling, 500s and
 * conditional-check races injected in the SDK clients). A run under all of them ends as one without.
 */

const RECORDS = 90;
const time = new ManualTime();
let env: LocalEnvironment;
let dir: string;
let loaded: Awaited<ReturnType<typeof loadWork>>;
let definition: Definition;
let s3Faults: SdkFaultCounts;
let dynamoFaults: SdkFaultCounts;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-faults-'));
  // On manual time: the run takes the same steps, and so meets the same seeded faults, whatever the load.
  env = await startLocalEnvironment(
    dir,
    time.emulator({
      validationMs: 1000,
      requestsPerSecond: 20_000,
      finalizingMs: 10,
      faults: { rate: 0.2, seed: 5, slowMs: 100 },
      seed: 11,
    }),
  );
  loaded = await loadWork(new URL('../fixtures/works/chat.ts', import.meta.url).pathname);
  definition = (await synthesizeDefinition(loaded)).definition;
  const ids = Array.from({ length: RECORDS }, (_, i) => `f${i}`);
  await env.s3.client.send(
    new PutObjectCommand({
      Bucket: env.s3.bucket,
      Key: 'inputs/faults.jsonl',
      Body: ids.map((id) => JSON.stringify({ id, content: `question ${id}` })).join('\n'),
    }),
  );
  s3Faults = injectSdkFaults(env.s3.client as never, {
    throttlingName: 'SlowDown',
    throttleRate: 0.08,
    serverErrorRate: 0.05,
    seed: 3,
  });
  dynamoFaults = injectSdkFaults(env.dynamo.client as never, {
    throttlingName: 'ThrottlingException',
    throttleRate: 0.08,
    serverErrorRate: 0.05,
    raceRate: 0.15,
    seed: 4,
  });
}, 60_000);

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('faults from outside', () => {
  it('completes a run under OpenAI, S3 and DynamoDB faults with every record, once', async () => {
    const result = await runLocally(
      env,
      loaded,
      'inputs/faults.jsonl',
      'faulty',
      time.runOptions(env, { lostCreateGraceMs: 1_000 }),
      { definition },
    );
    expect(result.output).toMatchObject({
      summary: { records: RECORDS, outputs: RECORDS, errors: 0, balanced: true },
    });
    const ids = await outputIds(env, 'faulty');
    const client = new OpenAI({ apiKey: env.openai.apiKey, baseURL: env.openai.baseURL });
    const paidTwice = await partsPaidTwice(client, 'faulty');
    expect(paidTwice).toBe(0);
    expect(ids).toEqual(Array.from({ length: RECORDS }, (_, i) => `f${i}`).sort());
    mkdirSync(RELIABILITY_DIR, { recursive: true });
    const record: FaultsRecord = {
      records: RECORDS,
      outputs: ids.length,
      partsPaidTwice: paidTwice,
      s3: { ...s3Faults },
      dynamodb: { ...dynamoFaults },
      openai: { ...env.emulator?.faults.injected },
    };
    writeFileSync(join(RELIABILITY_DIR, 'faults.json'), `${JSON.stringify(record, null, 2)}\n`);
    // The faults did happen, on every side.
    const injected = Object.values(env.emulator?.faults.injected ?? {}).reduce((a, b) => a + b, 0);
    expect(injected).toBeGreaterThan(3);
    expect(s3Faults.throttled + s3Faults.serverErrors).toBeGreaterThan(3);
    expect(dynamoFaults.throttled + dynamoFaults.serverErrors).toBeGreaterThan(3);
    expect(dynamoFaults.races).toBeGreaterThan(1);
  }, 180_000);
});

describe("OpenAI's enqueued token limit", () => {
  it('throttles parts refused with token_limit_exceeded and sends them again until all are admitted', async () => {
    // On manual time (test/support/manual-time.ts): the four parts are created at the same moment and
    // validated together, so one is admitted and the others are refused, whatever the machine's load. On
    // wall time a slow machine could space the creates so far apart that each batch had finished before
    // the next was validated, and no batch was refused. Each throttled part waits a minute, doubling: the
    // clock moves by what Tick asks, so those minutes pass at once.
    const time = new ManualTime();
    const limited = await startLocalEnvironment(
      join(dir, 'limited'),
      time.emulator({
        validationMs: 20,
        requestsPerSecond: 200,
        finalizingMs: 10,
        enqueuedTokenLimit: 700,
        seed: 2,
      }),
    );
    try {
      const ids = Array.from({ length: 160 }, (_, i) => `t${i}`);
      await limited.s3.client.send(
        new PutObjectCommand({
          Bucket: limited.s3.bucket,
          Key: 'inputs/limited.jsonl',
          Body: ids.map((id) => JSON.stringify({ id, content: `question ${id}` })).join('\n'),
        }),
      );
      const result = await runLocally(
        limited,
        loaded,
        'inputs/limited.jsonl',
        'limited',
        time.runOptions(limited),
        { definition },
      );
      expect(result.output).toMatchObject({
        summary: { records: 160, outputs: 160, errors: 0, balanced: true },
      });
      expect(await outputIds(limited, 'limited')).toEqual([...ids].sort());
      const client = new OpenAI({ apiKey: limited.openai.apiKey, baseURL: limited.openai.baseURL });
      const refused = [];
      for await (const batch of client.batches.list({ limit: 100 }))
        if (batch.errors?.data?.some((e) => e.code === 'token_limit_exceeded')) refused.push(batch.id);
      expect(refused.length).toBeGreaterThan(0);
      expect(await partsPaidTwice(client, 'limited')).toBe(0);
    } finally {
      await limited.stop();
    }
  }, 120_000);
});
