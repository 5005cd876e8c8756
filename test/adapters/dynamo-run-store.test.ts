import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import { InvariantError } from '../../functions/core/errors';
import { ConflictError } from '../../functions/core/ports';
import { newPart, type Part, type Run } from '../../functions/core/run';
import { type LocalDynamo, startDynalite, startDynamo } from '../../local/stand-ins';
import { runFixture as run } from '../support/runs';

describe.each([
  // In memory: a table of its own on the tests' DynamoDB Local (test/support/global-setup.ts).
  ['DynamoDB Local', (table: string) => startDynamo(table)],
  ['dynalite (where Java is missing)', (table: string, dir: string) => startDynalite(table, dir)],
])('DynamoRunStore on %s', (_, start) => {
  let dynamo: LocalDynamo;
  let store: DynamoRunStore;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'openai-batch-store-'));
    dynamo = await start('runs', join(dir, 'db'));
    store = new DynamoRunStore(dynamo.client, dynamo.table);
  });
  afterAll(async () => {
    await dynamo?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('claims a dataset for one run, names the holder to the next, and lets it go once released', async () => {
    expect(await store.createRun(run('a', 'same'), true)).toEqual({ created: true });
    expect(await store.createRun(run('b', 'same'), true)).toEqual({
      created: false,
      holder: { runId: 'a', status: 'running' },
    });
    expect(await store.createRun(run('a', 'same'), true)).toEqual({
      created: false,
      holder: { runId: 'a', status: 'running' },
    });
    await store.settleClaim('w', 'same', 'a', 'failed');
    expect(await store.createRun(run('c', 'same'), true)).toEqual({ created: true });
    expect(await store.createRun(run('d', 'same'), false)).toEqual({ created: true }); // allowSameDataset
    expect((await store.getRun('c'))?.runId).toBe('c');
  });

  it('refuses a write from a stale version', async () => {
    await store.createRun(run('v'), false);
    const first = (await store.getRun('v')) as Run;
    const saved = await store.putRun({ ...first, ticks: 1 });
    expect(saved.version).toBe(1);
    await expect(store.putRun({ ...first, ticks: 2 })).rejects.toBeInstanceOf(ConflictError);
    expect((await store.getRun('v'))?.ticks).toBe(1);
  });

  it('adds parts once, keeps one already under way, and guards each part by version', async () => {
    const part = newPart({ part: 0, generation: 0, model: 'm', requests: 3, bytes: 10, estimatedTokens: 5 });
    await store.addParts('p', [part, { ...part, part: 1 }]);
    const taken = await store.putPart('p', { ...part, status: 'submitting' });
    expect(taken?.version).toBe(1);
    expect(await store.putPart('p', { ...part, status: 'active' })).toBeNull(); // lost the race
    await store.addParts('p', [part]); // a prepare step run again
    expect((await store.listParts('p')).map((p) => [p.part, p.status])).toEqual([
      [0, 'submitting'],
      [1, 'pending'],
    ]);
  });

  it('refuses to store a part or a run it could not read back, so that the run stays readable', async () => {
    const part = newPart({ part: 0, generation: 0, model: 'm', requests: 3, bytes: 10, estimatedTokens: 5 });
    await store.addParts('unreadable', [part]);
    // What an answer that was not a batch once gave: no batch id, no status.
    const broken = {
      ...part,
      status: 'active',
      batchId: undefined,
      batchStatus: undefined,
    } as unknown as Part;
    await expect(store.putPart('unreadable', broken)).rejects.toThrow(
      /refusing to store part unreadable\/0, which could not be read back/,
    );
    await expect(store.addParts('unreadable', [{ ...broken, part: 1 }])).rejects.toBeInstanceOf(
      InvariantError,
    );
    expect((await store.listParts('unreadable')).map((p) => [p.part, p.status])).toEqual([[0, 'pending']]);
    await store.createRun(run('unreadable-run'), false);
    const stored = (await store.getRun('unreadable-run')) as Run;
    await expect(store.putRun({ ...stored, status: 'lost' } as unknown as Run)).rejects.toBeInstanceOf(
      InvariantError,
    );
    expect((await store.getRun('unreadable-run'))?.status).toBe(stored.status);
  });

  it('revives a failed run and claims its dataset again in one write, unless another run took it', async () => {
    const holderOf = async (hash: string) => {
      const probe = await store.createRun(run(`probe-${hash}`, hash), true);
      return probe.created ? 'free' : probe.holder;
    };
    const failed = async (runId: string, hash: string, claim = true) => {
      await store.createRun(run(runId, hash), claim);
      await store.settleClaim('w', hash, runId, 'failed');
      const stored = (await store.getRun(runId)) as Run;
      return store.putRun({ ...stored, status: 'failed', error: 'Boom: it broke' });
    };
    // Released by its failure: the claim is this run's again, and the run is written back.
    const a = await failed('rev-a', 'h-rev');
    const revived = await store.reviveRun({ ...a, status: 'running', error: null }, true);
    expect(revived).toEqual({ revived: { ...a, status: 'running', error: null, version: a.version + 1 } });
    expect(await store.getRun('rev-a')).toMatchObject({ status: 'running', version: a.version + 1 });
    expect(await holderOf('h-rev')).toEqual({ runId: 'rev-a', status: 'running' });
    // A stale version: another writer resumed it first.
    await expect(store.reviveRun({ ...a, status: 'running' }, true)).rejects.toBeInstanceOf(ConflictError);
    // Taken by another run since it failed: refused, naming the holder, and the run stays failed.
    const b = await failed('rev-b', 'h-taken');
    await store.createRun(run('taker', 'h-taken'), true);
    expect(await store.reviveRun({ ...b, status: 'running' }, true)).toEqual({
      revived: null,
      holder: { runId: 'taker', status: 'running' },
    });
    expect(await store.getRun('rev-b')).toMatchObject({ status: 'failed', version: b.version });
    // Its own claim never released (a MarkFailed that stopped early), or no claim at all (allowSameDataset).
    await store.createRun(run('rev-c', 'h-own'), true);
    const c = await store.putRun({ ...((await store.getRun('rev-c')) as Run), status: 'failed' });
    expect((await store.reviveRun({ ...c, status: 'running' }, true)).revived?.status).toBe('running');
    const d = await failed('rev-d', 'h-taken', false);
    expect((await store.reviveRun({ ...d, status: 'running' }, false)).revived?.status).toBe('running');
    expect(await holderOf('h-taken')).toEqual({ runId: 'taker', status: 'running' });
  });

  it('lists runs of a work newest first', async () => {
    await store.createRun({ ...run('old', 'h-old', 1000), work: 'listed' }, false);
    await store.createRun({ ...run('new', 'h-new', 2000), work: 'listed' }, false);
    expect((await store.listRuns('listed', 10)).map((r) => r.runId)).toEqual(['new', 'old']);
  });

  it('finds the run of a batch, and records a webhook event once until it is forgotten', async () => {
    expect(await store.findBatch('batch_x')).toBeNull();
    await store.recordBatch('batch_x', 'run-b', 3);
    expect(await store.findBatch('batch_x')).toEqual({ runId: 'run-b', part: 3 });
    expect(await store.recordEvent('evt_1', 2_000_000_000)).toBe(true);
    expect(await store.recordEvent('evt_1', 2_000_000_000)).toBe(false); // a replay
    await store.forgetEvent('evt_1'); // its handling failed: OpenAI's retry must get through
    expect(await store.recordEvent('evt_1', 2_000_000_000)).toBe(true);
  });
});
