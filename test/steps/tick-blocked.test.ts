import { PutObjectCommand } from '@aws-sdk/client-s3';
import { beforeAll, describe, expect, it } from 'vitest';
import { runKeys } from '../../functions/core/run';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import { EXECUTION_HAND_OVER_MS, tick } from '../../functions/steps/tick';
import { ManualClock } from '../../local/emulator/clock';
import { localDeps, RecordingNotifier } from '../../local/runner';
import { localEnvironment } from '../support/local-environment';
import { partFixture, runFixture } from '../support/runs';

/**
 * Tick against an OpenAI that is down, refuses the key or the quota: the run records why it waits and
 * since when, backs off, keeps its parts as they are (no record to errors), and clears the condition
 * once OpenAI answers. The emulator's outage windows run on the same manual clock as the steps.
 */

const work = defineWork({
  name: 'tick-blocked',
  model: 'gpt-4o-mini',
  minPollSeconds: 10,
  maxPollSeconds: 60,
});
const clock = new ManualClock(1_800_000_000_000);
const shared = localEnvironment('openai-batch-tick-blocked-', {
  kind: 'emulator',
  options: { clock, tickMs: 0, seed: 9 },
});
let deps: StepDeps<unknown>;
const metrics: { name: string; value: number }[] = [];

beforeAll(async () => {
  deps = {
    ...(localDeps(
      shared.env,
      work,
      { now: () => clock.now() },
      new RecordingNotifier(),
    ) as StepDeps<unknown>),
    metric: (name, value) => metrics.push({ name, value }),
  };
}, 60_000);

/** A prepared run with one pending part of one request, its request file in the bucket. */
async function pendingRun(runId: string): Promise<void> {
  const keys = runKeys(runId);
  const request = JSON.stringify({
    custom_id: 'a',
    method: 'POST',
    url: '/v1/chat/completions',
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] },
  });
  for (const [key, body] of [
    [keys.requests(0), `${request}\n`],
    [keys.lines(0), '1\n'],
  ] as const)
    await shared.env.s3.client.send(
      new PutObjectCommand({ Bucket: shared.env.s3.bucket, Key: key, Body: body }),
    );
  await deps.runs.createRun(
    { ...runFixture(runId), work: work.settings.name, status: 'running', prepared: true, execution: 'first' },
    false,
  );
  const part = partFixture();
  await deps.runs.addParts(runId, [part]);
}

describe('tick while OpenAI is blocked', () => {
  it('waits through an outage, backing off, and goes on when OpenAI answers', async () => {
    await pendingRun('outage');
    shared.env.emulator?.faults.outage('unavailable', 10 * 60_000);
    const first = await tick(deps, { runId: 'outage', executionName: 'first' });
    const since = clock.now();
    let run = await deps.runs.getRun('outage');
    expect(run?.blocked).toMatchObject({ reason: 'openai_unavailable', since });
    expect(run?.blocked?.message).toMatch(/^OpenAI is unavailable: 503/);
    expect(first).toMatchObject({ done: false, continueAsNew: false });
    expect(first.waitSeconds).toBe(10);

    clock.advance(first.waitSeconds * 1000);
    const second = await tick(deps, { runId: 'outage', executionName: 'first' });
    expect(second.waitSeconds).toBe(20); // backing off
    run = await deps.runs.getRun('outage');
    expect(run?.blocked?.since).toBe(since); // since the first time, not the last
    // The no-progress alarm sees the outage: minutes since it began.
    clock.advance(5 * 60_000);
    await tick(deps, { runId: 'outage', executionName: 'first' });
    expect(metrics.filter((m) => m.name === 'MinutesWithoutProgress').at(-1)?.value).toBe(5);

    // The part was never refused: at most it is back to pending, and it is sent once OpenAI answers.
    let [part] = await deps.runs.listParts('outage');
    expect(part?.failure).toBeNull();
    expect(['pending', 'submitting']).toContain(part?.status);
    clock.advance(6 * 60_000);
    await tick(deps, { runId: 'outage', executionName: 'first' });
    await tick(deps, { runId: 'outage', executionName: 'first' });
    [part] = await deps.runs.listParts('outage');
    expect(part?.status).toBe('active');
    expect(part?.batchId).toMatch(/^batch_/);
    expect((await deps.runs.getRun('outage'))?.blocked).toBeNull();
  });

  it('waits while the key is refused, says so, and raises the refused-access metric', async () => {
    await pendingRun('refused');
    shared.env.emulator?.faults.outage('unauthorized', 60_000);
    await tick(deps, { runId: 'refused', executionName: 'first' });
    const run = await deps.runs.getRun('refused');
    expect(run?.blocked?.reason).toBe('key_refused');
    expect(run?.blocked?.message).toMatch(/^OpenAI refused the API key: 401 Incorrect API key/);
    expect(metrics.filter((m) => m.name === 'OpenAIAccessRefused').at(-1)?.value).toBe(1);
    const [part] = await deps.runs.listParts('refused');
    expect(part?.status).not.toBe('collecting'); // not refused as a part: nothing goes to errors
    expect(part?.failure).toBeNull();

    clock.advance(61_000);
    await tick(deps, { runId: 'refused', executionName: 'first' });
    await tick(deps, { runId: 'refused', executionName: 'first' });
    expect((await deps.runs.getRun('refused'))?.blocked).toBeNull();
    expect(metrics.filter((m) => m.name === 'OpenAIAccessRefused').at(-1)?.value).toBe(0);
    expect((await deps.runs.listParts('refused'))[0]?.status).toBe('active');
  });

  it('names an exhausted quota apart from an outage', async () => {
    await pendingRun('quota');
    shared.env.emulator?.faults.outage('quota', 60_000);
    await tick(deps, { runId: 'quota', executionName: 'first' });
    const run = await deps.runs.getRun('quota');
    expect(run?.blocked?.reason).toBe('quota_exhausted');
    expect(run?.blocked?.message).toMatch(/quota/);
    clock.advance(61_000);
  });
});

describe('hand-over by time', () => {
  it('hands the run to a new execution once this one has driven it for ten days, whatever its ticks', async () => {
    await pendingRun('long');
    const first = await tick(deps, { runId: 'long', executionName: 'first' });
    expect(first.continueAsNew).toBe(false);
    clock.advance(EXECUTION_HAND_OVER_MS - 60_000);
    expect((await tick(deps, { runId: 'long', executionName: 'first' })).continueAsNew).toBe(false);
    clock.advance(60_000);
    const late = await tick(deps, { runId: 'long', executionName: 'first' });
    expect((await deps.runs.getRun('long'))?.ticks).toBe(3); // far below maxTicksPerExecution
    expect(late.continueAsNew).toBe(true);
    // The next execution counts its own time.
    const handed = await deps.runs.getRun('long');
    if (!handed) throw new Error('the run is gone');
    await deps.runs.putRun({ ...handed, execution: 'second' });
    expect((await tick(deps, { runId: 'long', executionName: 'second' })).continueAsNew).toBe(false);
  });
});
