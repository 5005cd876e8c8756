import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetItemCommand } from '@aws-sdk/client-dynamodb';
import { DeleteObjectCommand, GetObjectTaggingCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import { parsePartLine } from '../../functions/core/collect';
import { executionName } from '../../functions/core/execution-names';
import { type Part, type Run, runKeys } from '../../functions/core/run';
import type { RunSummary } from '../../functions/core/summary';
import { createHandlers, type Handlers } from '../../functions/handlers';
import { register } from '../../functions/steps/register';
import { tick } from '../../functions/steps/tick';
import { type LoadedWork, loadWork } from '../../infra/works';
import { type Definition, synthesizeDefinition } from '../../local/definition';
import { executeLocally } from '../../local/execute';
import {
  type LocalEnvironment,
  type LocalRunOptions,
  localDeps,
  RecordingNotifier,
  runLocally,
  startLocalEnvironment,
} from '../../local/runner';
import { ManualTime } from '../support/manual-time';
import { outputIds, partsPaidTwice } from '../support/run-checks';
import { runFixture } from '../support/runs';

const RECORDS = 30;
const ids = Array.from({ length: RECORDS }, (_, i) => `r${String(i).padStart(2, '0')}`);

let dir: string;
let env: LocalEnvironment;
let time: ManualTime;
let loaded: LoadedWork;
let definition: Definition;
let runs: DynamoRunStore;

/** The chat fixture in parts of 10 requests, two batches on OpenAI at once: a third part waits its turn. */
async function chatWork(): Promise<LoadedWork> {
  const fixture = await loadWork(new URL('../fixtures/works/chat.ts', import.meta.url).pathname);
  const settings = { ...fixture.work.settings, maxRequestsPerBatch: 10, maxActiveBatches: 2 };
  return { ...fixture, work: { ...fixture.work, settings } };
}

/** A Tick that fails the run for good (a fatal error: no retry, MarkFailed) after its `at`-th call. */
function failingAfterTick(at: number): (handlers: Handlers) => Handlers {
  let ticks = 0;
  return (handlers) => ({
    ...handlers,
    Tick: async (event: unknown) => {
      const ticked = await handlers.Tick(event);
      ticks += 1;
      if (ticks === at)
        throw Object.assign(new Error('a permanent failure, for the test'), { name: 'InvariantError' });
      return ticked;
    },
  });
}

/** The handlers of the work's state machine on manual time, as the local runner binds them. */
function handlersOf(options: LocalRunOptions): Handlers {
  const deps = localDeps(env, loaded.work, options, new RecordingNotifier());
  const created = createHandlers(deps, async () => {
    throw new Error('this test expects no hand-over to a new execution');
  });
  return options.wrap?.handlers?.(created) ?? created;
}

/** Starts an execution that resumes a run, with the input a person gives in the console. */
function resume(runId: string): Promise<unknown> {
  return executeLocally(
    definition,
    handlersOf(time.runOptions(env)),
    { resumeRunId: runId },
    { executionName: executionName(runId, 'resume', time.clock.now()), waitMs: 0 },
  );
}

async function claimOf(run: Run): Promise<{ runId: string | undefined; status: string | undefined }> {
  const { Item } = await env.dynamo.client.send(
    new GetItemCommand({
      TableName: env.dynamo.table,
      Key: { pk: { S: `DATASET#${run.work}#${run.datasetHash}` }, sk: { S: 'CLAIM' } },
      ConsistentRead: true,
    }),
  );
  return { runId: Item?.runId?.S, status: Item?.status?.S };
}

/**
 * Run `runId` over a dataset of its own (the ids with `-<runId>` appended), failed for good after its
 * first Tick, with work left; resolves with the dataset's ids.
 */
async function failedAfterFirstTick(runId: string): Promise<string[]> {
  const own = ids.map((id) => `${id}-${runId}`);
  const dataset = `inputs/e2e-chat/${runId}.jsonl`;
  await env.s3.client.send(
    new PutObjectCommand({
      Bucket: env.s3.bucket,
      Key: dataset,
      Body: own.map((id) => JSON.stringify({ id, content: `question ${id}` })).join('\n'),
    }),
  );
  await expect(
    runLocally(
      env,
      loaded,
      dataset,
      runId,
      time.runOptions(env, { wrap: { handlers: failingAfterTick(1) } }),
      { definition },
    ),
  ).rejects.toThrow('a permanent failure, for the test');
  return own;
}

async function textOf(key: string): Promise<string> {
  const chunks: Uint8Array[] = [];
  const blobs = localDeps(env, loaded.work, {}, new RecordingNotifier()).blobs;
  for await (const chunk of blobs.read(key)) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function summaryOf(runId: string): Promise<RunSummary> {
  return JSON.parse(await textOf(`runs/${runId}/summary.json`)) as RunSummary;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-resume-'));
  time = new ManualTime({ maxTicks: 300 });
  env = await startLocalEnvironment(
    dir,
    time.emulator({ validationMs: 1000, requestsPerSecond: 2, finalizingMs: 1000, seed: 12 }),
  );
  loaded = await chatWork();
  definition = (await synthesizeDefinition(loaded)).definition;
  runs = new DynamoRunStore(env.dynamo.client, env.dynamo.table);
  await env.s3.client.send(
    new PutObjectCommand({
      Bucket: env.s3.bucket,
      Key: 'inputs/e2e-chat/resume.jsonl',
      Body: ids.map((id) => JSON.stringify({ id, content: `question ${id}` })).join('\n'),
    }),
  );
}, 60_000);

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** A run of this work that failed before it was prepared, with its plan in S3; gives the plan's key. */
async function failedWithPlan(runId: string): Promise<string> {
  await runs.createRun({ ...runFixture(runId), work: 'e2e-chat' }, true);
  await runs.settleClaim('e2e-chat', `hash-${runId}`, runId, 'failed');
  await runs.putRun({ ...((await runs.getRun(runId)) as Run), status: 'failed', error: 'Error: broke' });
  const { plan } = runKeys(runId);
  await env.s3.client.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: plan, Body: '{}\n' }));
  return plan;
}

/** An object's tags. */
async function tagsOf(key: string) {
  return (await env.s3.client.send(new GetObjectTaggingCommand({ Bucket: env.s3.bucket, Key: key }))).TagSet;
}

/** The Register handler, on a store whose listing of a run's parts fails (after `meanwhile`, when given). */
function registerFailingListParts(meanwhile?: () => Promise<unknown>): Handlers['Register'] {
  return handlersOf(
    time.runOptions(env, {
      wrap: {
        runs: (store) =>
          new Proxy(store, {
            get: (target, property, receiver) =>
              property === 'listParts'
                ? async () => {
                    await meanwhile?.();
                    throw new Error('throttled, for the test');
                  }
                : Reflect.get(target, property, receiver),
          }),
      },
    }),
  ).Register;
}

describe('resuming a run that failed', () => {
  it('continues the same run: done parts stay done, nothing is paid twice, every record once', async () => {
    // The run fails for good after its third Tick: two batches are on OpenAI, part way, and one waits.
    await expect(
      runLocally(
        env,
        loaded,
        'inputs/e2e-chat/resume.jsonl',
        'resumed',
        time.runOptions(env, { wrap: { handlers: failingAfterTick(3) } }),
        { definition },
      ),
    ).rejects.toThrow('a permanent failure, for the test');
    const failed = (await runs.getRun('resumed')) as Run;
    expect(failed).toMatchObject({ status: 'failed', error: expect.stringContaining('a permanent failure') });
    expect(await claimOf(failed)).toEqual({ runId: 'resumed', status: 'failed' }); // released
    const before = await runs.listParts('resumed');
    expect(before.some((p) => p.batchId !== null)).toBe(true); // batches were created before it failed
    expect(before.some((p) => p.status !== 'done')).toBe(true); // and it had work left

    const output = await resume('resumed');

    expect(output).toBeTruthy();
    const done = (await runs.getRun('resumed')) as Run;
    expect(done).toMatchObject({ status: 'completed', error: null, blocked: null });
    expect(done.execution).toMatch(/^resumed-resume-/);
    expect(await outputIds(env, 'resumed')).toEqual(ids); // every record exactly once
    const summary = await summaryOf('resumed');
    expect(summary.counts).toMatchObject({ records: RECORDS, outputs: RECORDS, errors: 0 });
    expect(summary.reconciliation.balanced).toBe(true);
    expect(await claimOf(done)).toEqual({ runId: 'resumed', status: 'completed' });
    // Parts keep their batches: a batch created before the failure is the part's batch after it.
    const after = new Map((await runs.listParts('resumed')).map((p) => [p.part, p]));
    for (const part of before.filter((p: Part) => p.batchId !== null)) {
      expect(after.get(part.part)).toMatchObject({ batchId: part.batchId, attempt: part.attempt });
    }
    const client = new OpenAI({ apiKey: env.openai.apiKey, baseURL: env.openai.baseURL });
    expect(await partsPaidTwice(client, 'resumed')).toBe(0);
  }, 120_000);

  // An execution started with the console input {"resumeRunId"} has no $.dataset: its hand-overs must
  // not need one (a path to nothing is a runtime error no Catch sees, and the run would stay running).
  it('hands a run resumed from the console input over to new executions, and completes it', async () => {
    await env.s3.client.send(
      new PutObjectCommand({
        Bucket: env.s3.bucket,
        Key: 'inputs/e2e-chat/long.jsonl',
        Body: ids.map((id) => JSON.stringify({ id, content: `a longer question ${id}` })).join('\n'),
      }),
    );
    await expect(
      runLocally(
        env,
        loaded,
        'inputs/e2e-chat/long.jsonl',
        'handed',
        time.runOptions(env, { wrap: { handlers: failingAfterTick(1) } }),
        { definition },
      ),
    ).rejects.toThrow('a permanent failure, for the test');
    // Resumed as a person does in the console, in executions of three Ticks each: each hands over.
    const options = time.runOptions(env, { maxTicksPerExecution: 3 });
    const next: { name: string; input: Record<string, unknown> }[] = [];
    const deps = localDeps(env, loaded.work, options, new RecordingNotifier());
    const created = createHandlers(deps, async (_arn, name, input) => {
      next.push({ name, input });
    });
    const handlers = options.wrap?.handlers?.(created) ?? created;
    let execution = {
      name: executionName('handed', 'resume', time.clock.now()),
      input: { resumeRunId: 'handed' },
    };
    let executions = 0;
    for (;;) {
      executions += 1;
      await executeLocally(definition, handlers, execution.input, {
        executionName: execution.name,
        waitMs: 0,
      });
      const continued = next.shift();
      if (!continued) break;
      execution = continued as typeof execution;
    }
    expect(executions).toBeGreaterThan(1);
    expect(await runs.getRun('handed')).toMatchObject({ status: 'completed' });
    expect(await outputIds(env, 'handed')).toEqual(ids);
  }, 120_000);

  it("refuses a failed run whose files expired, naming them; a failed run's files are marked to expire", async () => {
    await failedAfterFirstTick('gone');
    const waiting = (await runs.listParts('gone')).find((p) => p.status !== 'done');
    if (!waiting) throw new Error('the failed run should have work left');
    const requests = `runs/gone/requests/part-${String(waiting.part).padStart(5, '0')}.jsonl`;
    expect(await tagsOf(requests)).toEqual([{ Key: 'openai-batch-intermediate', Value: 'ended' }]);
    // The lifecycle rule took it (14 days after it was written): the run cannot go on without it.
    await env.s3.client.send(new DeleteObjectCommand({ Bucket: env.s3.bucket, Key: requests }));
    await expect(resume('gone')).rejects.toThrow(`files it still needs are gone (${requests}`);
    expect((await runs.getRun('gone'))?.status).toBe('failed');
    // A resume that stops there leaves what is left to expire.
    const lines = requests.replace(/\.jsonl$/, '.entries');
    expect(await tagsOf(lines)).toEqual([{ Key: 'openai-batch-intermediate', Value: 'ended' }]);
  }, 120_000);

  it("marks a failed run's files ended again when its resume fails on the way, so that they still expire", async () => {
    const plan = await failedWithPlan('flaky');
    await expect(
      registerFailingListParts()({ input: { resumeRunId: 'flaky' }, executionName: 'flaky-resume-0' }),
    ).rejects.toThrow('throttled, for the test');
    expect((await runs.getRun('flaky'))?.status).toBe('failed');
    expect(await tagsOf(plan)).toEqual([{ Key: 'openai-batch-intermediate', Value: 'ended' }]);
  });

  it('leaves the files of a run another resume revived meanwhile running, when its own resume fails', async () => {
    const plan = await failedWithPlan('twice');
    const first = handlersOf(time.runOptions(env)).Register;
    // While this resume looks at the run's parts, a second start of it revives the run.
    const second = registerFailingListParts(() =>
      first({ input: { resumeRunId: 'twice' }, executionName: 'twice-resume-1' }),
    );
    await expect(
      second({ input: { resumeRunId: 'twice' }, executionName: 'twice-resume-0' }),
    ).rejects.toThrow('throttled, for the test');
    expect(await runs.getRun('twice')).toMatchObject({ status: 'preparing', execution: 'twice-resume-1' });
    expect(await tagsOf(plan)).toEqual([{ Key: 'openai-batch-intermediate', Value: 'running' }]);
  });

  it('completes a run whose parts were prepared before their lines files named the ids', async () => {
    const legacy = await failedAfterFirstTick('legacy');
    // Each part left as code from before wrote it: a `.lines` file of dataset lines, no `.entries`.
    const keys = runKeys('legacy');
    const waiting = (await runs.listParts('legacy')).filter((p) => p.status !== 'done');
    expect(waiting.length).toBeGreaterThan(0);
    for (const part of waiting) {
      const entries = await textOf(keys.entries(part.part));
      const numbers = entries
        .split('\n')
        .filter(Boolean)
        .map((entry) => String(parsePartLine(entry).line));
      await env.s3.client.send(
        new PutObjectCommand({
          Bucket: env.s3.bucket,
          Key: keys.lines(part.part),
          Body: `${numbers.join('\n')}\n`,
        }),
      );
      await env.s3.client.send(
        new DeleteObjectCommand({ Bucket: env.s3.bucket, Key: keys.entries(part.part) }),
      );
    }

    await resume('legacy');

    expect((await runs.getRun('legacy'))?.status).toBe('completed');
    expect(await outputIds(env, 'legacy')).toEqual(legacy); // every record exactly once
    const summary = await summaryOf('legacy');
    expect(summary.counts).toMatchObject({ records: RECORDS, outputs: RECORDS, errors: 0 });
    expect(summary.reconciliation.balanced).toBe(true);
    const client = new OpenAI({ apiKey: env.openai.apiKey, baseURL: env.openai.baseURL });
    expect(await partsPaidTwice(client, 'legacy')).toBe(0);
  }, 120_000);

  it('refuses a run that completed or was cancelled, and leaves it as it was', async () => {
    await expect(resume('resumed')).rejects.toThrow(
      'Run resumed has completed: there is nothing to resume. Its results are under runs/resumed/.',
    );
    expect(await runs.getRun('resumed')).toMatchObject({ status: 'completed' });
    await runs.createRun({ ...runFixture('stopped'), status: 'cancelled', prepared: true }, false);
    await expect(resume('stopped')).rejects.toThrow(
      'Run stopped was cancelled: a cancelled run is not resumed. Start a new run of its dataset (the cancel released it).',
    );
    expect(await runs.getRun('stopped')).toMatchObject({ status: 'cancelled', version: 0 });
    await expect(resume('no-such-run')).rejects.toThrow(
      'No run no-such-run to resume: there is no such run in this work.',
    );
  });

  it('waits for a wind-down to end, and takes over one whose MarkFailed died', async () => {
    const now = time.clock.now();
    await runs.createRun(
      {
        ...runFixture('winding'),
        status: 'running',
        prepared: true,
        failing: { error: 'InvariantError: a bug', since: now - 60_000, stalls: 0 },
      },
      false,
    );
    await expect(resume('winding')).rejects.toThrow(
      /Run winding is winding down after a failure \(InvariantError: a bug\).*Resume it once it has failed/,
    );
    expect((await runs.getRun('winding'))?.failing).not.toBeNull();
    // A wind-down begun long ago whose MarkFailed never finished: the run is taken over, the mark gone.
    const stale = (await runs.getRun('winding')) as Run;
    await runs.putRun({
      ...stale,
      failing: { ...(stale.failing ?? { error: '', stalls: 0 }), since: now - 3_600_000 },
    });
    const deps = localDeps<unknown>(env, loaded.work, time.runOptions(env), new RecordingNotifier());
    await register(deps, {
      dataset: undefined,
      runId: 'winding',
      resume: true,
      execution: 'winding-2',
    });
    expect(await runs.getRun('winding')).toMatchObject({ execution: 'winding-2', failing: null });
  });

  it('refuses when another run took its dataset since it failed, naming that run', async () => {
    await runs.createRun({ ...runFixture('first', 'h-shared'), work: 'e2e-chat' }, true);
    await runs.settleClaim('e2e-chat', 'h-shared', 'first', 'failed');
    const first = (await runs.getRun('first')) as Run;
    await runs.putRun({ ...first, status: 'failed', error: 'Boom: it broke' });
    await env.s3.client.send(
      new PutObjectCommand({ Bucket: env.s3.bucket, Key: runKeys('first').plan, Body: '{}\n' }),
    ); // not prepared: its lanes need their shard plan
    await runs.createRun({ ...runFixture('second', 'h-shared'), work: 'e2e-chat' }, true);
    const register = handlersOf(time.runOptions(env)).Register;
    await expect(register({ input: { resumeRunId: 'first' }, executionName: 'first-again' })).rejects.toThrow(
      "Run first cannot be resumed: since it failed, its dataset's content was taken by run second (running) of this work.",
    );
    expect(await runs.getRun('first')).toMatchObject({ status: 'failed', execution: 'first' });
  });

  it('revives a run that failed before it was prepared: preparing again, error and blocked state gone', async () => {
    await runs.createRun({ ...runFixture('early'), work: 'e2e-chat' }, true);
    await runs.settleClaim('e2e-chat', 'hash-early', 'early', 'failed');
    const early = (await runs.getRun('early')) as Run;
    await runs.putRun({
      ...early,
      status: 'failed',
      error: 'Error: the step broke',
      blocked: { reason: 'key_refused', message: 'Incorrect API key provided', since: 1 },
      ticks: 7,
      waiting: 'early',
    });
    const register = handlersOf(time.runOptions(env)).Register;
    // Its lanes read the shard plan: without it, it is refused, naming it (lane checkpoints need not be there).
    const { plan } = runKeys('early');
    await expect(
      register({ input: { resumeRunId: 'early' }, executionName: 'early-resume-0' }),
    ).rejects.toThrow(`files it still needs are gone (${plan})`);
    await env.s3.client.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: plan, Body: '{}\n' }));
    expect(await register({ input: { resumeRunId: 'early' }, executionName: 'early-resume-1' })).toEqual({
      runId: 'early',
      prepared: false,
      objects: 1,
      lanes: [0],
    });
    const revived = (await runs.getRun('early')) as Run;
    expect(revived).toMatchObject({
      status: 'preparing',
      error: null,
      blocked: null,
      ticks: 0,
      waiting: null,
      execution: 'early-resume-1',
      dataset: early.dataset,
      nextPart: early.nextPart,
    });
    expect(await claimOf(revived)).toEqual({ runId: 'early', status: 'running' });
  });

  it('takes over a run that is still running: the old execution ends at its next Tick', async () => {
    await runs.createRun({ ...runFixture('busy'), status: 'running', prepared: true }, false);
    const options = time.runOptions(env);
    const register = handlersOf(options).Register;
    expect(await register({ input: { resumeRunId: 'busy' }, executionName: 'busy-resume-1' })).toEqual({
      runId: 'busy',
      prepared: true,
      objects: 1,
      lanes: [0],
    });
    expect(await runs.getRun('busy')).toMatchObject({ status: 'running', execution: 'busy-resume-1' });
    const deps = localDeps(env, loaded.work, options, new RecordingNotifier());
    expect(await tick(deps, { runId: 'busy', executionName: 'busy' })).toMatchObject({ superseded: true });
  });

  it('needs a dataset or a run to resume, and says so', async () => {
    const register = handlersOf(time.runOptions(env)).Register;
    await expect(register({ input: {}, executionName: 'nothing' })).rejects.toThrow(
      'Invalid execution input: dataset: dataset is required: "s3://bucket/key" or a key in the work\'s bucket (or resumeRunId, to resume a run)',
    );
  });
});
