import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import OpenAI from 'openai';
import { DynamoRunStore } from '../functions/adapters/dynamo-run-store';
import { OpenAIBatchApi } from '../functions/adapters/openai-batch-api';
import { S3BlobStore } from '../functions/adapters/s3-blob-store';
import { openaiWebhookVerifier } from '../functions/adapters/webhook-verifier';
import type { BatchApi, BlobStore, RunStore } from '../functions/core/ports';
import { createHandlers, type Handlers } from '../functions/handlers';
import type { Log, Notifier, StepDeps } from '../functions/steps/deps';
import { receiveWebhook, type WebhookDeps } from '../functions/steps/webhook';
import type { LoadedWork } from '../infra/works';
import { type Definition, synthesizeDefinition } from './definition';
import type { EmulatorOptions } from './emulator/server';
import { type Emulator, startEmulator } from './emulator/server';
import { executeLocally } from './execute';
import { type LocalDynamo, type LocalS3, startDynamo, startS3 } from './stand-ins';
import { startWebhookReceiver, type WebhookReceiver } from './webhook-receiver';

/** The bucket and table names the local stand-ins use. */
export const LOCAL_BUCKET = 'openai-batch-local';
export const LOCAL_TABLE = 'openai-batch-runs';

/** Where OpenAI is for a local run. */
export type OpenAITarget =
  | { readonly kind: 'emulator'; readonly options?: EmulatorOptions }
  | { readonly kind: 'url'; readonly baseURL: string; readonly apiKey: string };

/** The stand-ins of one local environment. */
export interface LocalEnvironment {
  readonly dir: string;
  readonly s3: LocalS3;
  readonly dynamo: LocalDynamo;
  readonly emulator: Emulator | null;
  readonly openai: { readonly baseURL: string; readonly apiKey: string };
  /** Where the emulator sends its signed webhooks, when asked for (see `startLocalEnvironment`). */
  readonly webhooks: WebhookReceiver | null;
  stop(): Promise<void>;
}

/**
 * Starts the stand-ins on free loopback ports, with their data under `dir`: s3rver (S3), DynamoDB Local,
 * and the OpenAI emulator unless OpenAI is elsewhere.
 */
export async function startLocalEnvironment(
  dir: string,
  target: OpenAITarget = { kind: 'emulator' },
  persist = false,
  options: { readonly webhooks?: boolean } = {},
): Promise<LocalEnvironment> {
  mkdirSync(dir, { recursive: true });
  const s3 = await startS3(join(dir, 's3'), LOCAL_BUCKET);
  const dynamo = await startDynamo(LOCAL_TABLE, persist ? join(dir, 'dynamodb') : undefined).catch(
    async (caught: unknown) => {
      await s3.stop();
      throw caught;
    },
  );
  // Webhooks locally: the emulator signs and sends them to a receiver on loopback (the real OpenAI cannot
  // reach this machine, so a run against it polls).
  const webhooks = options.webhooks && target.kind === 'emulator' ? await startWebhookReceiver() : null;
  const emulator =
    target.kind === 'emulator'
      ? await startEmulator({
          ...target.options,
          ...(webhooks ? { webhook: { url: webhooks.url, secret: webhooks.secret } } : {}),
        })
      : null;
  const openai =
    target.kind === 'url'
      ? { baseURL: target.baseURL, apiKey: target.apiKey }
      : { baseURL: emulator?.url ?? '', apiKey: target.options?.apiKey ?? 'sk-local-emulator' };
  return {
    dir,
    s3,
    dynamo,
    emulator,
    openai,
    webhooks,
    async stop() {
      await emulator?.stop();
      await webhooks?.stop();
      await dynamo.stop();
      await s3.stop();
    },
  };
}

/** What a local run was told (announcements), for the caller to print or test. */
export class RecordingNotifier implements Notifier {
  readonly events: { detailType: string; detail: Record<string, unknown> }[] = [];
  async notify(detailType: 'Run Completed' | 'Run Failed', detail: Record<string, unknown>): Promise<void> {
    this.events.push({ detailType, detail });
  }
}

/** Options of a local run. */
export interface LocalRunOptions {
  /** Milliseconds each Wait lasts; null waits as long as Tick asked (against a real API). @default 50 */
  readonly waitMs?: number | null;
  /** How long a step works before it checkpoints. @default 240000 */
  readonly budgetMs?: number;
  /** How long a Prepare call may inflate a gzip object. @default Infinity (no timeout stops a local call) */
  readonly inflateMs?: number;
  readonly maxTicksPerExecution?: number;
  /** How long a lost create is looked for before its part is sent again. @default 120000 */
  readonly lostCreateGraceMs?: number;
  /** The steps' clock (tests move it on to pass backoffs of minutes at once). @default Date.now */
  readonly now?: () => number;
  readonly log?: Log;
  readonly onState?: (state: string) => void;
  readonly onOutput?: (state: string, output: unknown) => void;
  /** Replace a port, to record or break calls in tests. */
  readonly wrap?: {
    readonly blobs?: (store: BlobStore) => BlobStore;
    readonly runs?: (store: RunStore) => RunStore;
    readonly openai?: (api: BatchApi) => BatchApi;
    /**
     * Replace the state machine's task handlers: each call is awaited by the execution, so a test can act
     * between two states (move a manual clock at Tick's Wait, see test/support/manual-time.ts).
     */
    readonly handlers?: (handlers: Handlers) => Handlers;
  };
}

/** The step dependencies of a work in a local environment. */
export function localDeps<R>(
  env: LocalEnvironment,
  work: LoadedWork['work'],
  options: LocalRunOptions,
  notifier: Notifier,
): StepDeps<R> {
  const blobs = new S3BlobStore(env.s3.client, env.s3.bucket);
  const runs = new DynamoRunStore(env.dynamo.client, env.dynamo.table);
  const client = new OpenAI({ apiKey: env.openai.apiKey, baseURL: env.openai.baseURL });
  const api = new OpenAIBatchApi(client);
  return {
    work: work as unknown as StepDeps<R>['work'],
    bucket: env.s3.bucket,
    blobs: options.wrap?.blobs?.(blobs) ?? blobs,
    runs: options.wrap?.runs?.(runs) ?? runs,
    openai: async () => options.wrap?.openai?.(api) ?? api,
    notifier,
    now: options.now ?? (() => Date.now()),
    budgetMs: options.budgetMs ?? 240_000,
    inflateMs: options.inflateMs ?? Number.POSITIVE_INFINITY,
    maxTicksPerExecution: options.maxTicksPerExecution ?? 1500,
    lostCreateGraceMs: options.lostCreateGraceMs ?? 120_000,
    log: options.log ?? (() => {}),
    metric: () => {},
  };
}

/** The outcome of a local run. */
export interface LocalRunResult {
  readonly runId: string;
  /** The output of the last execution of the run. */
  readonly output: Record<string, unknown>;
  /** How many executions the run took (more than one when it continued in a new one). */
  readonly executions: number;
  readonly notifier: RecordingNotifier;
}

/**
 * Runs a work over a dataset already in the local bucket: the state machine CDK synthesizes for the work,
 * unchanged, with every Task bound to the same handlers as in Lambda. A run that continues in a new
 * execution is followed to its end.
 */
export async function runLocally(
  env: LocalEnvironment,
  loaded: LoadedWork,
  dataset: string,
  runId: string,
  options: LocalRunOptions = {},
  prepared?: { definition: Definition },
): Promise<LocalRunResult> {
  const definition = prepared?.definition ?? (await synthesizeDefinition(loaded)).definition;
  const notifier = new RecordingNotifier();
  const next: { name: string; input: Record<string, unknown> }[] = [];
  const deps = localDeps(env, loaded.work, options, notifier);
  const created: Handlers = createHandlers(deps, async (_arn, name, input) => {
    next.push({ name, input });
  });
  const handlers = options.wrap?.handlers?.(created) ?? created;
  let input: Record<string, unknown> = { dataset };
  let name = runId;
  let executions = 0;
  let current: { name: string; stop: AbortController } | null = null;
  if (env.webhooks && loaded.work.settings.webhooks) {
    const secret = env.webhooks.secret;
    const receiver: WebhookDeps = {
      runs: deps.runs,
      verify: openaiWebhookVerifier(async () => secret),
      control: {
        start: async (started, resumed) => {
          next.push({ name: started, input: resumed });
        },
        // The local counterpart of StopExecution: abort the execution if it is the one running.
        stop: async (stopped) => {
          if (current?.name === stopped) current.stop.abort();
        },
      },
      now: deps.now,
      log: deps.log,
    };
    env.webhooks.handle = (request) => receiveWebhook(receiver, request);
  }
  try {
    for (;;) {
      executions += 1;
      current = { name, stop: new AbortController() };
      const output = (await executeLocally(definition, handlers, input, {
        executionName: name,
        signal: current.stop.signal,
        ...(options.waitMs === null ? {} : { waitMs: options.waitMs ?? 50 }),
        ...(options.onState ? { onState: options.onState } : {}),
        ...(options.onOutput ? { onOutput: options.onOutput } : {}),
      })) as Record<string, unknown> | null;
      const continued = next.shift();
      if (!continued) {
        if (!output) throw new Error(`execution ${name} was stopped and no execution took the run over`);
        return { runId, output, executions, notifier };
      }
      name = continued.name;
      input = continued.input;
    }
  } finally {
    if (env.webhooks) env.webhooks.handle = null;
  }
}
