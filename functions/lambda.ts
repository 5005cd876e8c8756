/**
 * The Lambda entry point: one bundle per work (the work comes in through the `@work` alias), one exported
 * handler per state. Configuration is read from the environment once, when the module loads.
 */
import { getHeapStatistics } from 'node:v8';
import { Logger } from '@aws-lambda-powertools/logger';
import { Metrics, MetricUnit } from '@aws-lambda-powertools/metrics';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { EventBridgeClient } from '@aws-sdk/client-eventbridge';
import { S3Client } from '@aws-sdk/client-s3';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { SFNClient, StartExecutionCommand, StopExecutionCommand } from '@aws-sdk/client-sfn';
import { SNSClient } from '@aws-sdk/client-sns';
import work from '@work';
import { z } from 'zod';
import { DROPPED_HEAP_FLAGS_ENV } from '../infra/step-memory';
import { DynamoRunStore } from './adapters/dynamo-run-store';
import { AwsNotifier } from './adapters/notifier';
import { batchApiWithKey } from './adapters/openai-batch-api';
import { S3BlobStore } from './adapters/s3-blob-store';
import { cachedApiKey, cachedWebhookSecret } from './adapters/secret';
import { openaiWebhookVerifier } from './adapters/webhook-verifier';
import { ConfigError } from './core/errors';
import { describeIssues } from './core/issues';
import { createHandlers } from './handlers';
import { DEFAULT_STEP_BUDGET_MS } from './steps/deps';
import { receiverSecret, receiveWebhook, type WebhookDeps } from './steps/webhook';

/** The environment the stack gives every function. */
export const LambdaEnvSchema = z.object({
  BUCKET_NAME: z.string().min(1),
  TABLE_NAME: z.string().min(1),
  OPENAI_SECRET_ID: z.string().min(1),
  EVENT_BUS_NAME: z.string().min(1),
  TOPIC_ARN: z.string().min(1).optional(),
  OPENAI_BASE_URL: z.url().optional(),
  STEP_BUDGET_MS: z.coerce.number().int().positive().default(DEFAULT_STEP_BUDGET_MS),
  /** The webhook receiver only: its signing secret and the state machine it restarts runs of. */
  WEBHOOK_SECRET_ID: z.string().min(1).optional(),
  STATE_MACHINE_ARN: z.string().min(1).optional(),
  MAX_TICKS_PER_EXECUTION: z.coerce.number().int().positive().default(1500),
  /** The stack's name: a dimension of the metrics, beside the work's (two stacks of one work alarm apart). */
  STACK_NAME: z.string().min(1).optional(),
  /** Set by the heap-flags start wrapper (infra/heap-wrapper.ts): the flags it removed, '' for none. */
  [DROPPED_HEAP_FLAGS_ENV]: z.string().optional(),
});

const parsed = LambdaEnvSchema.safeParse(process.env);
if (!parsed.success)
  throw new ConfigError(`Invalid Lambda environment: ${describeIssues(parsed.error, {}, false).join('; ')}`);
const env = parsed.data;
const logger = new Logger({ serviceName: `openai-batch-${work.settings.name}` });
/**
 * The heap bounds in effect, once a cold start. The stack gives Prepare, Settle, Tick and MarkFailed
 * theirs in NODE_OPTIONS (infra/step-memory.ts), and starts them through a wrapper that removes the same
 * flags from the command line Lambda's start script builds (infra/heap-wrapper.ts), where they would win:
 * this says the limit, the flags given, and what the wrapper removed (absent where it did not run).
 */
logger.info('node heap', {
  node: process.version,
  heapLimitMiB: Math.round(getHeapStatistics().heap_size_limit / 2 ** 20),
  heapFlags: [...(process.env.NODE_OPTIONS ?? '').split(' '), ...process.execArgv].filter((flag) =>
    /^--max[-_](old|semi)[-_]space[-_]size/.test(flag),
  ),
  ...(env[DROPPED_HEAP_FLAGS_ENV] === undefined
    ? {}
    : { removedFromCommandLine: env[DROPPED_HEAP_FLAGS_ENV].split(' ').filter(Boolean) }),
});
/**
 * CloudWatch metrics as embedded metric format, written by Powertools to stdout as a line of its own: a
 * `console.log` line would be wrapped in `message` by Lambda's JSON log format and never extracted.
 * The dimensions are `Work` and `Stack`, as the stack's alarms and dashboard read them (Powertools'
 * default `service` dimension would make another metric).
 */
const metrics = new Metrics({ namespace: 'OpenAIBatch', serviceName: `openai-batch-${work.settings.name}` });
metrics.clearDefaultDimensions();
metrics.setDefaultDimensions({
  Work: work.settings.name,
  ...(env.STACK_NAME ? { Stack: env.STACK_NAME } : {}),
});

/** A handler that flushes the metrics it recorded when it ends, whether it returns or throws. */
function flushingMetrics<E, R>(handler: (event: E) => Promise<R>): (event: E) => Promise<R> {
  return async (event) => {
    try {
      return await handler(event);
    } finally {
      if (metrics.hasStoredMetrics()) metrics.publishStoredMetrics();
    }
  };
}

const s3 = new S3Client({
  requestChecksumCalculation: 'WHEN_REQUIRED',
  responseChecksumValidation: 'WHEN_REQUIRED',
});
const apiKey = cachedApiKey(new SecretsManagerClient({}), env.OPENAI_SECRET_ID);
const sfn = new SFNClient({});
const dynamo = new DynamoDBClient({});

const handlers = createHandlers(
  {
    work,
    bucket: env.BUCKET_NAME,
    blobs: new S3BlobStore(s3, env.BUCKET_NAME),
    runs: new DynamoRunStore(dynamo, env.TABLE_NAME),
    openai: batchApiWithKey(apiKey, env.OPENAI_BASE_URL),
    notifier: new AwsNotifier(
      new EventBridgeClient({}),
      env.EVENT_BUS_NAME,
      env.TOPIC_ARN ? new SNSClient({}) : null,
      env.TOPIC_ARN ?? null,
    ),
    now: () => Date.now(),
    budgetMs: env.STEP_BUDGET_MS,
    maxTicksPerExecution: env.MAX_TICKS_PER_EXECUTION,
    lostCreateGraceMs: 2 * 60_000,
    log: (message, fields) => logger.info(message, fields ?? {}),
    metric: (name, value) => metrics.addMetric(name, MetricUnit.NoUnit, value),
  },
  async (stateMachineArn, name, input) => {
    await sfn.send(new StartExecutionCommand({ stateMachineArn, name, input: JSON.stringify(input) }));
  },
);

export const register = flushingMetrics(handlers.Register);
export const prepare = flushingMetrics(handlers.Prepare);
export const settle = flushingMetrics(handlers.Settle);
export const tick = flushingMetrics(handlers.Tick);
export const finalize = flushingMetrics(handlers.Finalize);
export const cleanUp = flushingMetrics(handlers.CleanUp);
export const notify = flushingMetrics(handlers.Notify);
export const markFailed = flushingMetrics(handlers.MarkFailed);
export const continueRun = flushingMetrics(handlers.ContinueRun);

/** What a Lambda Function URL hands over (payload format 2.0): only what the receiver reads. */
const FunctionUrlEventSchema = z.object({
  headers: z.record(z.string(), z.string()).default({}),
  body: z.string().default(''),
  isBase64Encoded: z.boolean().default(false),
});

/** What the webhook receiver needs, made once when the module loads (only in the receiver's function). */
function receiverDeps(): WebhookDeps | null {
  const stateMachineArn = env.STATE_MACHINE_ARN;
  if (!env.WEBHOOK_SECRET_ID || !stateMachineArn) return null;
  const executionArn = (name: string) =>
    `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${name}`;
  return {
    runs: new DynamoRunStore(dynamo, env.TABLE_NAME),
    verify: openaiWebhookVerifier(
      receiverSecret(cachedWebhookSecret(new SecretsManagerClient({}), env.WEBHOOK_SECRET_ID)),
    ),
    control: {
      start: async (name, input) => {
        await sfn.send(new StartExecutionCommand({ stateMachineArn, name, input: JSON.stringify(input) }));
      },
      stop: async (name) => {
        await sfn.send(
          new StopExecutionCommand({
            executionArn: executionArn(name),
            cause: 'A webhook resumed the run in a new execution',
          }),
        );
      },
    },
    now: () => Date.now(),
    log: (message, fields) => logger.info(message, fields ?? {}),
  };
}
const receiver = receiverDeps();

/** The webhook receiver behind the Function URL (see steps/webhook.ts). */
export const webhook = async (event: unknown) => {
  const parsed = FunctionUrlEventSchema.safeParse(event);
  if (!parsed.success || !receiver) return { statusCode: 400, body: '{}' };
  const { headers, body, isBase64Encoded } = parsed.data;
  return receiveWebhook(receiver, {
    headers,
    body: isBase64Encoded ? Buffer.from(body, 'base64').toString('utf8') : body,
  });
};
