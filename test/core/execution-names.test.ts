import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import { openaiWebhookVerifier } from '../../functions/adapters/webhook-verifier';
import {
  checkRunId,
  executionName,
  MAX_EXECUTION_NAME,
  runIdProblem,
} from '../../functions/core/execution-names';
import { createHandlers } from '../../functions/handlers';
import type { StepDeps } from '../../functions/steps/deps';
import { type ExecutionControl, receiveWebhook } from '../../functions/steps/webhook';
import { signWebhook } from '../../local/emulator/webhooks';
import { type LocalDynamo, startDynamo } from '../../local/stand-ins';
import { runFixture } from '../support/runs';

/** The same millisecond for every name made in a test (old code read the wall clock). */
const NOW = Date.UTC(2026, 10, 26, 12, 0, 0);
const ALLOWED = [...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!()+=@'];

/** A valid run id of `length` characters, ending in what tells it from its neighbours. */
const runIdOf = (length: number, tail = 'z') => `${'r'.repeat(length - tail.length)}${tail}`;

const valid = (name: string) => name.length >= 1 && name.length <= MAX_EXECUTION_NAME && !runIdProblem(name);

afterEach(() => {
  vi.useRealTimers();
});

describe('execution names', () => {
  it('are valid and tell runs apart, whole run ids kept while they fit', () => {
    expect(executionName('a', 'next', NOW, 'n0n0n0')).toBe(`a-next-${NOW.toString(36)}n0n0n0`);
    const long = executionName(runIdOf(80), 'resume', NOW, 'n0n0n0');
    expect(long.length).toBeLessThanOrEqual(MAX_EXECUTION_NAME);
    expect(long.startsWith('rrrr')).toBe(true);
    expect(long).not.toBe(executionName(runIdOf(80, 'y'), 'resume', NOW, 'n0n0n0')); // same head, other id
  });

  it('for any valid run id: 1-80 allowed characters, and two made in the same millisecond differ', () => {
    const runId = fc
      .array(fc.constantFrom(...ALLOWED), { minLength: 1, maxLength: MAX_EXECUTION_NAME })
      .map((chars) => chars.join(''));
    fc.assert(
      fc.property(runId, fc.constantFrom('next', 'wake', 'resume') as fc.Arbitrary<'next'>, (id, kind) => {
        const a = executionName(id, kind, NOW);
        const b = executionName(id, kind, NOW);
        expect(valid(a) && valid(b)).toBe(true);
        expect(a).not.toBe(b);
        expect(a).not.toBe(id);
      }),
    );
  });

  it('never cut a character in half', () => {
    const name = executionName(`${'a'.repeat(46)}${'😀'.repeat(10)}`, 'next', NOW, 'n0n0n0');
    expect(name.length).toBeLessThanOrEqual(MAX_EXECUTION_NAME);
    expect(name).not.toMatch(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/); // no lone surrogate
  });
});

describe('run ids', () => {
  it('are names of an execution: 1-80 characters, none that Step Functions refuses', () => {
    expect(checkRunId(runIdOf(80))).toBe(runIdOf(80));
    expect(() => checkRunId(runIdOf(81))).toThrow(
      /Invalid run id: a run id has at most 80 characters \(it is the name of the run's first execution\); "r+z" has 81\./,
    );
    expect(() => checkRunId('')).toThrow('Invalid run id: a run id must not be empty.');
    for (const bad of ['a b', 'a/b', 'a:b', 'a#b', 'a*b', 'a\u0007b'])
      expect(() => checkRunId(bad), bad).toThrow(/Invalid run id: .*must not contain/);
  });
});

describe('ContinueRun hands a run of any valid id to a new execution', () => {
  for (const length of [1, 78, 79, 80]) {
    it(`with a ${length}-character run id, twice in the same millisecond`, async () => {
      vi.useFakeTimers({ now: NOW, toFake: ['Date'] });
      const started: { name: string; input: Record<string, unknown> }[] = [];
      const deps = { now: () => NOW, log: () => {} } as unknown as StepDeps<unknown>;
      const handlers = createHandlers(deps, async (_arn, name, input) => {
        started.push({ name, input });
      });
      const runId = runIdOf(length);
      const event = { runId, dataset: 's3://b/k', stateMachineArn: 'arn:sm', executionName: runId };
      await handlers.ContinueRun(event);
      await handlers.ContinueRun({ ...event, executionName: started[0]?.name });
      const [first, second] = started.map((s) => s.name);
      expect(started).toHaveLength(2);
      for (const name of [first, second]) expect(valid(name ?? ''), name).toBe(true);
      expect(new Set([runId, first, second]).size).toBe(3);
      expect(started[0]?.input).toEqual({ dataset: 's3://b/k', resumeRunId: runId });
    });
  }
});

describe('a webhook wakes a run of any valid id in a new execution', () => {
  let dynamo: LocalDynamo;
  let runs: DynamoRunStore;
  const secret = `whsec_${Buffer.from('a test signing secret of 32 bytes!').toString('base64')}`;
  beforeAll(async () => {
    dynamo = await startDynamo('runs');
    runs = new DynamoRunStore(dynamo.client, dynamo.table);
  });
  afterAll(async () => {
    await dynamo?.stop();
  });

  it('twice in the same millisecond, for runs whose ids share their first 79 characters', async () => {
    // Step Functions has no stand-in outside a local run: a recording control stands in for it.
    const started: string[] = [];
    const control: ExecutionControl = {
      start: async (name) => {
        started.push(name);
      },
      stop: async () => {},
    };
    const wake = async (runId: string, eventId: string) => {
      const run = await runs.getRun(runId);
      if (!run) throw new Error('no run');
      await runs.putRun({ ...run, waiting: run.execution }); // its execution is in its Wait state
      const body = JSON.stringify({
        id: eventId,
        object: 'event',
        type: 'batch.completed',
        created_at: 1,
        data: { id: `batch_${runId}` },
      });
      // The signature's timestamp is checked against the wall clock; the names are made at NOW.
      const signedAt = Math.floor(Date.now() / 1000);
      return receiveWebhook(
        { runs, verify: openaiWebhookVerifier(async () => secret), control, now: () => NOW, log: () => {} },
        { body, headers: signWebhook(secret, eventId, signedAt, body) },
      );
    };
    const ids = [runIdOf(80, 'a'), runIdOf(80, 'b'), runIdOf(1, 'c')];
    for (const runId of ids) {
      await runs.createRun({ ...runFixture(runId), status: 'running', prepared: true }, false);
      await runs.recordBatch(`batch_${runId}`, runId, 0);
    }
    for (const [i, runId] of ids.entries()) {
      expect((await wake(runId, `evt_${i}_1`)).statusCode).toBe(200);
      expect((await wake(runId, `evt_${i}_2`)).statusCode).toBe(200);
    }
    expect(started).toHaveLength(6);
    for (const name of started) expect(valid(name), name).toBe(true);
    expect(new Set([...started, ...ids]).size).toBe(9);
  });
});
