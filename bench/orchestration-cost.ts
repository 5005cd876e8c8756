/**
 * What the AWS side of a run costs, from counts measured while the real state machine runs locally over
 * a simulated batch lifetime: 20 batches (a million requests at 50,000 a batch) that OpenAI takes 20
 * hours to finish. The emulator and the steps share a manual clock that jumps by the wait each Tick
 * chose, so a day passes in seconds while every Task, state transition and DynamoDB request is real.
 * Prints one JSON line. Compared with the naive design: one Map branch per batch, polling every minute.
 *
 *   tsx bench/orchestration-cost.ts [--webhooks] [--parts N]
 *
 * `--parts 100` is a run larger than `maxActiveBatches` (20): 5M requests whose parts wait for room in
 * five waves of 20 hours. The figure is always per million requests.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { openaiWebhookVerifier } from '../functions/adapters/webhook-verifier';
import { defineWork } from '../functions/core/work';
import { createHandlers } from '../functions/handlers';
import { receiveWebhook, type WebhookDeps } from '../functions/steps/webhook';
import { partMemory, SIZING, WEBHOOK_SIZING } from '../infra/openai-batch-work';
import { TASKS, type TaskName } from '../infra/state-machine';
import { synthesizeDefinition } from '../local/definition';
import { ManualClock } from '../local/emulator/clock';
import { executeLocally } from '../local/execute';
import { localDeps, RecordingNotifier, startLocalEnvironment } from '../local/runner';
import { AWS_PRICES, S3_PUT_CLASS } from './aws-prices';

const MAX_ACTIVE_BATCHES = 20;
const partsAt = process.argv.indexOf('--parts');
const BATCHES = partsAt >= 0 ? Number(process.argv[partsAt + 1]) : MAX_ACTIVE_BATCHES;
if (!Number.isInteger(BATCHES) || BATCHES < 1) throw new Error('--parts needs a whole number of parts');
const REQUESTS_PER_BATCH = 200; // stands for 50,000: the orchestration does not depend on a batch's size
const REQUESTS_AT_SCALE = BATCHES * 50_000;
const HOURS_ON_OPENAI = 20;
const withWebhooks = process.argv.includes('--webhooks');

const dir = mkdtempSync(join(tmpdir(), 'openai-batch-cost-'));
const clock = new ManualClock(Date.UTC(2026, 0, 1));
const env = await startLocalEnvironment(
  dir,
  {
    kind: 'emulator',
    options: {
      clock,
      tickMs: 0,
      validationMs: 10 * 60_000,
      finalizingMs: 5 * 60_000,
      requestsPerSecond: REQUESTS_PER_BATCH / (HOURS_ON_OPENAI * 3600),
      seed: 1,
    },
  },
  false,
  { webhooks: withWebhooks },
);

const s3Calls = new Map<string, number>();
const dynamo = { read: 0, write: 0 };
env.s3.client.middlewareStack.add(
  (next, context) => async (args) => {
    const name = (context as { commandName?: string }).commandName ?? 'unknown';
    s3Calls.set(name, (s3Calls.get(name) ?? 0) + 1);
    return next(args);
  },
  { step: 'initialize', name: 'countS3' },
);
const READS = new Set([
  'GetItemCommand',
  'QueryCommand',
  'BatchGetItemCommand',
  'ScanCommand',
  'TransactGetItemsCommand',
]);
env.dynamo.client.middlewareStack.add(
  (next, context) => async (args) => {
    const input = args.input as Record<string, unknown>;
    input.ReturnConsumedCapacity = 'TOTAL';
    const result = await next(args);
    const consumed = (result.output as { ConsumedCapacity?: unknown }).ConsumedCapacity;
    const units = (
      (Array.isArray(consumed) ? consumed : [consumed]) as ({ CapacityUnits?: number } | undefined)[]
    ).reduce((n, c) => n + (c?.CapacityUnits ?? 0), 0);
    if (READS.has((context as { commandName?: string }).commandName ?? '')) dynamo.read += units;
    else dynamo.write += units;
    return result;
  },
  { step: 'initialize', name: 'countDynamo' },
);

const work = defineWork({
  name: 'cost',
  model: 'gpt-4o-mini',
  maxRequestsPerBatch: REQUESTS_PER_BATCH,
  maxActiveBatches: MAX_ACTIVE_BATCHES,
  // With webhooks polls are the safety net only: an hour apart.
  minPollSeconds: withWebhooks ? 3600 : 30,
  maxPollSeconds: withWebhooks ? 3600 : 900,
  webhooks: withWebhooks,
});
const loaded = { work, module: new URL('../works/example.ts', import.meta.url).pathname };
const { definition } = await synthesizeDefinition(loaded);
const records = Array.from({ length: BATCHES * REQUESTS_PER_BATCH }, (_, i) =>
  JSON.stringify({ id: `r${i}`, messages: [{ role: 'user', content: `question ${i}` }] }),
);
await env.s3.client.send(
  new PutObjectCommand({ Bucket: env.s3.bucket, Key: 'inputs/cost.jsonl', Body: records.join('\n') }),
);

const deps = { ...localDeps(env, work, {}, new RecordingNotifier()), now: () => clock.now() };
const handlers = createHandlers(deps, async () => {});
const invocations = Object.fromEntries(TASKS.map((t) => [t, { count: 0, ms: 0 }])) as Record<
  TaskName,
  { count: number; ms: number }
>;
let lastWait = 0;

// Webhooks: the emulator's signed events reach the real receiving code (its DynamoDB calls counted).
// Waking a run means, on AWS, StopExecution and a new execution (Register, then a Choice) before the
// Tick: the bench's one execution goes straight on to its Tick, and each wake is charged those extras.
const wakes = { count: 0, receiverMs: 0, deliveries: 0 };
let woken = false;
if (env.webhooks) {
  const { secret } = env.webhooks;
  const receiver: WebhookDeps = {
    runs: deps.runs,
    verify: openaiWebhookVerifier(async () => secret),
    control: {
      start: async () => {
        wakes.count += 1;
        woken = true;
      },
      stop: async () => {},
    },
    now: () => clock.now(),
    log: () => {},
  };
  env.webhooks.handle = async (request) => {
    const started = performance.now();
    const answer = await receiveWebhook(receiver, request);
    wakes.deliveries += 1;
    wakes.receiverMs += Math.max(1, Math.ceil(performance.now() - started));
    return answer;
  };
}

/** The Wait before a Tick, in simulated time: all of it, or until a webhook wakes the run. */
async function wait(seconds: number): Promise<void> {
  if (!env.webhooks) {
    clock.advance(seconds * 1000);
    return;
  }
  woken = false;
  for (let waited = 0; waited < seconds && !woken; waited += 60) {
    clock.advance(Math.min(60, seconds - waited) * 1000);
    await env.emulator?.settle();
    await env.emulator?.webhooks?.idle();
  }
}
const timed = Object.fromEntries(
  TASKS.map((name) => [
    name,
    async (event: unknown) => {
      if (name === 'Tick') {
        await wait(lastWait); // the Wait before this Tick, in simulated time
        await env.emulator?.settle();
      }
      const started = performance.now();
      const result = await handlers[name](event);
      invocations[name].count += 1;
      invocations[name].ms += Math.max(1, Math.ceil(performance.now() - started));
      if (name === 'Tick') lastWait = (result as { waitSeconds: number }).waitSeconds;
      return result;
    },
  ]),
) as typeof handlers;

let transitions = 0;
const wallStarted = performance.now();
const simulatedStart = clock.now();
await executeLocally(
  definition,
  timed,
  { dataset: 'inputs/cost.jsonl' },
  { executionName: 'cost', waitMs: 0, onState: () => (transitions += 1) },
);
await new Promise((r) => setTimeout(r, 50)); // let the event log drain
// A figure is only worth its run: an execution that handed over (ContinueRun is a no-op here) or failed
// would have stopped the bill early.
const ended = await deps.runs.getRun('cost');
if (ended?.status !== 'completed')
  throw new Error(`the run ended ${ended?.status ?? 'unknown'}, not completed`);
const simulatedHours = (clock.now() - simulatedStart) / 3_600_000;

// Each wake on AWS: a new execution's Register and Choice (2 transitions), a Register invocation as long
// as the measured average, and Register's read and rewrite of the run (1 read, 2 write units).
const register = invocations.Register;
transitions += 2 * wakes.count;
dynamo.read += wakes.count;
dynamo.write += 2 * wakes.count;
const lambdaLoad: { memoryMb: number; count: number; ms: number }[] = [
  ...TASKS.map((name) => ({
    memoryMb:
      name === 'Prepare' || name === 'Tick'
        ? partMemory(work.settings.maxBytesPerBatch)
        : SIZING[name].memorySize,
    count: invocations[name].count + (name === 'Register' ? wakes.count : 0),
    ms:
      invocations[name].ms +
      (name === 'Register' ? (wakes.count * register.ms) / Math.max(1, register.count) : 0),
  })),
  { memoryMb: WEBHOOK_SIZING.memorySize, count: wakes.deliveries, ms: wakes.receiverMs },
];
let lambdaUsd = 0;
let lambdaGbSeconds = 0;
for (const { memoryMb, count, ms } of lambdaLoad) {
  const gbSeconds = (memoryMb / 1024) * (ms / 1000);
  lambdaGbSeconds += gbSeconds;
  lambdaUsd += gbSeconds * AWS_PRICES.lambdaGbSecondArm + count * AWS_PRICES.lambdaRequest;
}
let s3Usd = 0;
for (const [name, count] of s3Calls)
  s3Usd += count * (S3_PUT_CLASS.has(name) ? AWS_PRICES.s3Put : AWS_PRICES.s3Get);
// At real size a 50,000-request part is ~50 MB: its request, output and error files go up in 5 MiB pieces.
const multipartAtScale = BATCHES * 3 * 10 * AWS_PRICES.s3Put;
const transitionsUsd = transitions * AWS_PRICES.stateTransition;
const dynamoUsd = dynamo.read * AWS_PRICES.dynamoReadUnit + dynamo.write * AWS_PRICES.dynamoWriteUnit;
const total = transitionsUsd + lambdaUsd + s3Usd + multipartAtScale + dynamoUsd;
const per1M = 1e6 / REQUESTS_AT_SCALE;

// The naive design: a Map branch per batch, each polling once a minute for the batch's lifetime (Wait,
// Task, Choice a poll), with a 128 MB Lambda as long as our average Tick.
const ticks = invocations.Tick;
const pollMs = ticks.count > 0 ? ticks.ms / ticks.count : 100;
const polls = BATCHES * HOURS_ON_OPENAI * 60;
const naive =
  polls *
  (3 * AWS_PRICES.stateTransition +
    AWS_PRICES.lambdaRequest +
    (128 / 1024) * (pollMs / 1000) * AWS_PRICES.lambdaGbSecondArm);

await env.stop();
rmSync(dir, { recursive: true, force: true });
const round = (usd: number) => Number(usd.toFixed(5));
console.log(
  JSON.stringify({
    batches: BATCHES,
    maxActiveBatches: MAX_ACTIVE_BATCHES,
    requestsAtScale: REQUESTS_AT_SCALE,
    simulatedHours: Number(simulatedHours.toFixed(1)),
    wallSeconds: Number(((performance.now() - wallStarted) / 1000).toFixed(1)),
    webhooks: withWebhooks,
    webhookDeliveries: wakes.deliveries,
    webhookOutcomes: Object.fromEntries(
      [...new Set(env.webhooks?.received.map((r) => `${r.statusCode} ${r.outcome}`))].map((k) => [
        k,
        env.webhooks?.received.filter((r) => `${r.statusCode} ${r.outcome}` === k).length,
      ]),
    ),
    wakes: wakes.count,
    ticks: ticks.count,
    transitions,
    lambdaInvocations: lambdaLoad.reduce((n, l) => n + l.count, 0),
    lambdaGbSeconds: Number(lambdaGbSeconds.toFixed(2)),
    dynamoReadUnits: Math.round(dynamo.read),
    dynamoWriteUnits: Math.round(dynamo.write),
    s3Requests: [...s3Calls.values()].reduce((a, b) => a + b, 0),
    usdPer1MRequestsByService: {
      stepFunctions: round(transitionsUsd * per1M),
      lambda: round(lambdaUsd * per1M),
      dynamodb: round(dynamoUsd * per1M),
      s3: round((s3Usd + multipartAtScale) * per1M),
    },
    usdPerRun: round(total),
    usdPer1MRequests: round(total * per1M),
    naiveUsdPer1MRequests: round(naive * per1M),
  }),
);
