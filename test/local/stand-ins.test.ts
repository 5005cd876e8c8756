import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetItemCommand, ListTablesCommand, PutItemCommand } from '@aws-sdk/client-dynamodb';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { describe, expect, it, vi } from 'vitest';
import { SHARED_DYNAMODB_ENV, startDynamo, startS3 } from '../../local/stand-ins';

const item = { pk: { S: 'run#a' }, sk: { S: 'run' } };

describe('startDynamo beside the DynamoDB Local the tests share', () => {
  it('gives each in-memory stand-in a table of its own there, removed on stop', async () => {
    const shared = JSON.parse(process.env[SHARED_DYNAMODB_ENV] ?? 'null') as { endpoint: string } | null;
    expect(shared, 'test/support/global-setup.ts names the shared server').not.toBeNull();
    const [one, two] = await Promise.all([startDynamo('runs'), startDynamo('runs')]);
    try {
      expect(one.endpoint).toBe(shared?.endpoint);
      expect(two.endpoint).toBe(shared?.endpoint);
      expect(one.table).not.toBe(two.table);
      await one.client.send(new PutItemCommand({ TableName: one.table, Item: item }));
      const seen = async (of: typeof one) =>
        (await of.client.send(new GetItemCommand({ TableName: of.table, Key: item }))).Item !== undefined;
      expect(await seen(one)).toBe(true);
      expect(await seen(two)).toBe(false);
    } finally {
      await one.stop();
    }
    const tables = (await two.client.send(new ListTablesCommand({}))).TableNames ?? [];
    expect(tables).toContain(two.table);
    expect(tables).not.toContain(one.table);
    await two.stop();
  });

  it("names apart the tables of two copies of the module in one process, as vitest's threads pool loads them", async () => {
    const copy = async () => {
      vi.resetModules();
      return (await import('../../local/stand-ins')).startDynamo('runs');
    };
    const one = await copy();
    const two = await copy();
    try {
      expect(one.table).not.toBe(two.table);
    } finally {
      await Promise.all([one.stop(), two.stop()]);
      vi.resetModules();
    }
  });

  it('names the variable when it holds no server', async () => {
    const shared = process.env[SHARED_DYNAMODB_ENV];
    try {
      for (const value of ['not json', '{"endpoint":"127.0.0.1:1","kind":"dynamodb-local"}', '{}']) {
        process.env[SHARED_DYNAMODB_ENV] = value;
        await expect(startDynamo('runs'), value).rejects.toThrow(
          `${SHARED_DYNAMODB_ENV} should hold the { "endpoint", "kind" } of a DynamoDB stand-in as JSON; it holds ${JSON.stringify(value)}`,
        );
      }
    } finally {
      if (shared === undefined) delete process.env[SHARED_DYNAMODB_ENV];
      else process.env[SHARED_DYNAMODB_ENV] = shared;
    }
  });

  it('starts a server of its own for a stand-in that stores under a directory', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'openai-batch-stand-ins-'));
    const dynamo = await startDynamo('runs', join(dir, 'db'));
    try {
      expect(dynamo.endpoint).not.toBe(JSON.parse(process.env[SHARED_DYNAMODB_ENV] ?? '{}').endpoint);
      expect(dynamo.table).toBe('runs');
    } finally {
      await dynamo.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('startS3', () => {
  it('replaces an object whole, as S3 does: a read while the same key is written again sees one version or the other, under its own ETag', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'openai-batch-s3-atomic-'));
    const s3 = await startS3(dir, 'atomic');
    try {
      const versions = [Buffer.alloc(256 * 1024, 'a'), Buffer.alloc(128 * 1024, 'b')];
      const put = (body: Buffer) =>
        s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'state/count', Body: body }));
      await put(versions[0] as Buffer);
      const seen = new Set<string>();
      const reads = async () => {
        for (let i = 0; i < 60; i++) {
          const got = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: 'state/count' }));
          const bytes = Buffer.from(await (got.Body?.transformToByteArray() ?? new Uint8Array()));
          const md5 = `"${createHash('md5').update(bytes).digest('hex')}"`;
          if (got.ETag !== md5) seen.add(`a body under another version's ETag`);
          seen.add(
            versions.some((v) => v.equals(bytes)) ? bytes.subarray(0, 1).toString() : `${bytes.length} bytes`,
          );
        }
      };
      const writes = async () => {
        for (let i = 0; i < 60; i++) await put(versions[i % 2] as Buffer);
      };
      await Promise.all([reads(), reads(), writes()]);
      // Only whole versions were read (never an empty or a cut one).
      expect([...seen].every((s) => s === 'a' || s === 'b')).toBe(true);
      const listed = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket }));
      expect((listed.Contents ?? []).map((o) => o.Key)).toEqual(['state/count']);
    } finally {
      await s3.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
