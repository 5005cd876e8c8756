import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetItemCommand, ListTablesCommand, PutItemCommand } from '@aws-sdk/client-dynamodb';
import { describe, expect, it, vi } from 'vitest';
import { SHARED_DYNAMODB_ENV, startDynamo } from '../../local/stand-ins';

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
