import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectTaggingCommand, ListObjectsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3BlobStore } from '../../functions/adapters/s3-blob-store';
import { runKeys } from '../../functions/core/run';
import { defineWork } from '../../functions/core/work';
import type { Handlers } from '../../functions/handlers';
import {
  intermediatePrefixes,
  markIntermediatesEnded,
  markIntermediatesRunning,
} from '../../functions/steps/intermediates';
import { writeAll } from '../../functions/steps/storage';
import { OpenAIBatchWork } from '../../infra/openai-batch-work';
import { loadWork } from '../../infra/works';
import { unbundledApp } from '../../local/definition';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { chunksOf } from '../support/streams';

/** An S3 lifecycle rule that expires objects, as the synthesized bucket has it. */
interface ExpiringRule {
  readonly Prefix?: string;
  readonly TagFilters?: readonly { Key: string; Value: string }[];
  readonly ExpirationInDays?: number;
  readonly Status: string;
}

let env: LocalEnvironment;
let dir: string;
let blobs: S3BlobStore;
let rules: ExpiringRule[];
const deps = () => ({ blobs, log: () => {} });

/** The tags of an object, as a record. */
async function tagsOf(key: string): Promise<Record<string, string>> {
  const { TagSet } = await env.s3.client.send(
    new GetObjectTaggingCommand({ Bucket: env.s3.bucket, Key: key }),
  );
  return Object.fromEntries((TagSet ?? []).map((t) => [t.Key ?? '', t.Value ?? '']));
}

async function keysUnder(prefix: string): Promise<string[]> {
  const listed = await env.s3.client.send(new ListObjectsCommand({ Bucket: env.s3.bucket, Prefix: prefix }));
  return (listed.Contents ?? []).map((o) => o.Key ?? '');
}

/** Whether any of the bucket's lifecycle rules would expire this object, once it is old enough. */
async function expires(key: string): Promise<boolean> {
  const tags = await tagsOf(key);
  return rules.some(
    (rule) =>
      rule.Status === 'Enabled' &&
      rule.ExpirationInDays !== undefined &&
      key.startsWith(rule.Prefix ?? '') &&
      (rule.TagFilters ?? []).every((filter) => tags[filter.Key] === filter.Value),
  );
}

/** The objects of a run, split by whether the lifecycle rule would expire them. */
async function expiringOf(runId: string): Promise<{ expiring: string[]; kept: string[] }> {
  const split = { expiring: [] as string[], kept: [] as string[] };
  for (const key of await keysUnder(runKeys(runId).prefix))
    ((await expires(key)) ? split.expiring : split.kept).push(key);
  return split;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-intermediates-'));
  env = await startLocalEnvironment(dir, {
    kind: 'emulator',
    options: { validationMs: 30, requestsPerSecond: 5000, finalizingMs: 20, tickMs: 10, seed: 7 },
  });
  blobs = new S3BlobStore(env.s3.client, env.s3.bucket);
  // The lifecycle rules of the bucket the stack deploys.
  const app = unbundledApp();
  const stack = new Stack(app, 'Test', { env: { account: '123456789012', region: 'eu-west-1' } });
  new OpenAIBatchWork(stack, 'Work', {
    work: defineWork({ name: 'unit', model: 'gpt-4o-mini' }),
    workModule: new URL('../fixtures/works/chat.ts', import.meta.url).pathname,
  });
  const [bucket] = Object.values(Template.fromStack(stack).findResources('AWS::S3::Bucket'));
  rules = bucket?.Properties.LifecycleConfiguration.Rules ?? [];
}, 60_000);

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('marking a run intermediate objects', () => {
  it('marks every request file, line sidecar and checkpoint of the run ended, and nothing else', async () => {
    const keys = runKeys('mark-1');
    const parts = 40; // more than are marked at once
    for (let part = 0; part < parts; part++) {
      await blobs.write(keys.requests(part), chunksOf('{"custom_id":"a"}\n'));
      await blobs.write(keys.lines(part), chunksOf('1\n'));
    }
    await writeAll(blobs, keys.lane(0), new Uint8Array(8));
    await blobs.write(keys.outputs(0), chunksOf('{"id":"a"}\n'));
    await writeAll(blobs, keys.summary, '{}');
    const other = runKeys('mark-10').requests(0); // a run whose id starts with this one's
    await blobs.write(other, chunksOf('{}\n'));

    expect(await expiringOf('mark-1')).toMatchObject({ expiring: [] });
    expect(await markIntermediatesEnded(deps(), 'mark-1')).toBe(2 * parts + 1);

    const { expiring, kept } = await expiringOf('mark-1');
    expect(expiring).toHaveLength(2 * parts + 1);
    expect(expiring.every((k) => intermediatePrefixes('mark-1').some((p) => k.startsWith(p)))).toBe(true);
    expect(kept.sort()).toEqual([keys.outputs(0), keys.summary].sort());
    expect(await tagsOf(keys.requests(7))).toEqual({ 'openai-batch-intermediate': 'ended' });
    expect(await tagsOf(other)).toEqual({ 'openai-batch-intermediate': 'running' });

    // Again (a retried step): the same marks. Running again (a resumed run): nothing expires.
    expect(await markIntermediatesEnded(deps(), 'mark-1')).toBe(2 * parts + 1);
    expect(await markIntermediatesRunning(deps(), 'mark-1')).toBe(2 * parts + 1);
    expect((await expiringOf('mark-1')).expiring).toEqual([]);
  });

  it('marks nothing for a run that left nothing', async () => {
    expect(await markIntermediatesEnded(deps(), 'mark-empty')).toBe(0);
  });

  it('stops at the first failure and passes it on', async () => {
    const keys = runKeys('mark-2');
    for (let part = 0; part < 20; part++) await blobs.write(keys.requests(part), chunksOf('{}\n'));
    const failing = Object.assign(Object.create(blobs) as S3BlobStore, {
      markIntermediate: async (key: string) => {
        if (key === keys.requests(3)) throw new Error('S3 is down');
        return true;
      },
    });
    await expect(markIntermediatesEnded({ blobs: failing, log: () => {} }, 'mark-2')).rejects.toThrow(
      'S3 is down',
    );
  });
});

describe('the lifecycle rule over a whole run', () => {
  it('expires no intermediate object while the run runs, and all of them once it has ended (cleanUp: false)', async () => {
    const loaded = await loadWork(new URL('../fixtures/works/chat.ts', import.meta.url).pathname);
    const kept = {
      ...loaded,
      work: { ...loaded.work, settings: { ...loaded.work.settings, cleanUp: false } },
    };
    const records = Array.from({ length: 100 }, (_, i) => JSON.stringify({ id: `k${i}`, content: `q ${i}` }));
    await env.s3.client.send(
      new PutObjectCommand({ Bucket: env.s3.bucket, Key: 'inputs/kept.jsonl', Body: records.join('\n') }),
    );
    // Before every Tick and at Finalize the run is running: nothing of it may be expiring.
    const whileRunning: string[] = [];
    let ticks = 0;
    const wrap = (handlers: Handlers): Handlers => {
      const check = async (): Promise<void> => {
        whileRunning.push(...(await expiringOf('kept-1')).expiring);
      };
      return {
        ...handlers,
        Tick: async (event: unknown) => {
          await check();
          ticks += 1;
          return handlers.Tick(event);
        },
        Finalize: async (event: unknown) => {
          await check();
          return handlers.Finalize(event);
        },
      };
    };
    const result = await runLocally(env, kept, 'inputs/kept.jsonl', 'kept-1', {
      waitMs: 20,
      wrap: { handlers: wrap },
    });
    expect(result.output).toMatchObject({ summary: { outputs: 100, balanced: true } });
    expect(ticks).toBeGreaterThan(0);
    expect(whileRunning).toEqual([]);

    const ended = await expiringOf('kept-1');
    const intermediates = (await keysUnder('runs/kept-1/requests/')).concat(
      await keysUnder('runs/kept-1/state/'),
    );
    expect(intermediates.length).toBeGreaterThanOrEqual(6); // 3 parts: requests and line files, and more
    expect(ended.expiring.sort()).toEqual(intermediates.sort());
    expect(ended.kept.every((k) => /\/(outputs|errors)\/|summary\.json$/.test(k))).toBe(true);
  }, 60_000);
});
