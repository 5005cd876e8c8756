import { AsyncLocalStorage } from 'node:async_hooks';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import type { Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import { openaiWebhookVerifier } from '../../functions/adapters/webhook-verifier';
import { ConfigError } from '../../functions/core/errors';
import { runKeys } from '../../functions/core/run';
import { createHandlers } from '../../functions/handlers';
import { receiveWebhook } from '../../functions/steps/webhook';
import { TASKS } from '../../infra/state-machine';
import { loadWork } from '../../infra/works';
import { type Definition, synthesizeDefinition } from '../../local/definition';
import { signWebhook } from '../../local/emulator/webhooks';
import { executeLocally } from '../../local/execute';
import {
  type LocalEnvironment,
  localDeps,
  RecordingNotifier,
  startLocalEnvironment,
} from '../../local/runner';
import { runFixture } from '../support/runs';

/**
 * Every AWS API call the functions make, recorded while the synthesized state machine runs against the
 * stand-ins, must be granted to the function of the state that made it, on the resource it needs, by
 * an action named in full. Calls only Lambda makes (the key from Secrets Manager, EventBridge, SNS,
 * StartExecution) are recorded at the ports that stand for them.
 */

/** The IAM action each SDK command needs, and on what. */
const ACTIONS: Record<
  string,
  {
    action: string;
    on: 'objects' | 'bucket' | 'table' | 'index' | 'secret' | 'bus' | 'topic' | 'stateMachine' | 'executions';
  }
> = {
  GetObjectCommand: { action: 's3:GetObject', on: 'objects' },
  HeadObjectCommand: { action: 's3:GetObject', on: 'objects' },
  PutObjectCommand: { action: 's3:PutObject', on: 'objects' },
  PutObjectTaggingCommand: { action: 's3:PutObjectTagging', on: 'objects' },
  CreateMultipartUploadCommand: { action: 's3:PutObject', on: 'objects' },
  UploadPartCommand: { action: 's3:PutObject', on: 'objects' },
  CompleteMultipartUploadCommand: { action: 's3:PutObject', on: 'objects' },
  AbortMultipartUploadCommand: { action: 's3:AbortMultipartUpload', on: 'objects' },
  ListObjectsCommand: { action: 's3:ListBucket', on: 'bucket' },
  DeleteObjectsCommand: { action: 's3:DeleteObject', on: 'objects' },
  GetItemCommand: { action: 'dynamodb:GetItem', on: 'table' },
  PutItemCommand: { action: 'dynamodb:PutItem', on: 'table' },
  UpdateItemCommand: { action: 'dynamodb:UpdateItem', on: 'table' },
  QueryCommand: { action: 'dynamodb:Query', on: 'table' },
  TransactWriteItemsCommand: { action: 'dynamodb:PutItem', on: 'table' },
  GetSecretValueCommand: { action: 'secretsmanager:GetSecretValue', on: 'secret' },
  PutEventsCommand: { action: 'events:PutEvents', on: 'bus' },
  PublishCommand: { action: 'sns:Publish', on: 'topic' },
  StartExecutionCommand: { action: 'states:StartExecution', on: 'stateMachine' },
  StopExecutionCommand: { action: 'states:StopExecution', on: 'executions' },
  DeleteItemCommand: { action: 'dynamodb:DeleteItem', on: 'table' },
  // S3 answers a read of a missing key 404 only to a caller that may list the bucket, else 403: a step
  // that takes a missing object as an answer (a file gone, expired) needs s3:ListBucket.
  'GetObjectCommand#missing': { action: 's3:ListBucket', on: 'bucket' },
  'HeadObjectCommand#missing': { action: 's3:ListBucket', on: 'bucket' },
  'PutObjectTaggingCommand#missing': { action: 's3:ListBucket', on: 'bucket' },
};

const step = new AsyncLocalStorage<string>();
const calls = new Set<string>(); // `${state} ${command}`
let env: LocalEnvironment;
let dir: string;
let template: Template;
let definition: Definition;
/** The template of a work with webhooks on: the one with the receiver's function. */
let webhookTemplate: Template;

function record(command: string) {
  const state = step.getStore();
  if (state) calls.add(`${state} ${command}`);
}

function instrument(client: {
  middlewareStack: { add: (mw: never, options: { step: 'initialize'; name: string }) => void };
}) {
  const middleware =
    (next: (args: unknown) => Promise<unknown>, context: { commandName?: string }) =>
    async (args: unknown) => {
      if (context.commandName) record(context.commandName);
      try {
        return await next(args);
      } catch (caught) {
        const status = (caught as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
        if (status === 404 && context.commandName) record(`${context.commandName}#missing`);
        throw caught;
      }
    };
  client.middlewareStack.add(middleware as never, { step: 'initialize', name: 'recordForIamTest' });
}

async function runRecorded(
  dataset: string,
  name: string,
  options: {
    maxTicksPerExecution?: number;
    maxCostUsd?: number;
    cleanUp?: boolean;
    /** The execution's input in the stead of `{ dataset }` (a resume). */
    input?: Record<string, unknown>;
    /** Tick's first call fails the way a wrong config does: the run fails once prepared. */
    failFirstTick?: boolean;
  } = {},
) {
  const loaded = await loadWork(new URL('../fixtures/works/chat.ts', import.meta.url).pathname);
  const work = {
    ...loaded.work,
    settings: {
      ...loaded.work.settings,
      ...(options.maxCostUsd ? { maxCostUsd: options.maxCostUsd } : {}),
      ...(options.cleanUp === undefined ? {} : { cleanUp: options.cleanUp }),
    },
  };
  const notifier = new RecordingNotifier();
  const deps = localDeps(env, work, { maxTicksPerExecution: options.maxTicksPerExecution ?? 1500 }, notifier);
  const handlers = createHandlers(
    {
      ...deps,
      // In Lambda the first use of OpenAI fetches the key; notifying calls EventBridge (SNS only with a topic,
      // which this work has not: the topic grant is checked in openai-batch-work.test.ts).
      openai: async () => {
        record('GetSecretValueCommand');
        return deps.openai();
      },
      notifier: {
        notify: async (type, detail) => {
          record('PutEventsCommand');
          return notifier.notify(type, detail);
        },
      },
    },
    async () => record('StartExecutionCommand'),
  );
  let tickFailed = !options.failFirstTick;
  const wrapped = Object.fromEntries(
    TASKS.map((t) => [
      t,
      (event: unknown) => {
        if (t === 'Tick' && !tickFailed) {
          tickFailed = true;
          throw new ConfigError('the test fails this run in its first Tick');
        }
        return step.run(t, () => handlers[t](event));
      },
    ]),
  ) as typeof handlers;
  return executeLocally(definition, wrapped, options.input ?? { dataset }, {
    executionName: name,
    waitMs: 20,
  }).catch((e: unknown) => e);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-iam-'));
  env = await startLocalEnvironment(dir, {
    kind: 'emulator',
    options: { validationMs: 20, requestsPerSecond: 5000, finalizingMs: 10, tickMs: 10 },
  });
  instrument(env.s3.client as never);
  instrument(env.dynamo.client as never);
  const loaded = await loadWork(new URL('../fixtures/works/chat.ts', import.meta.url).pathname);
  ({ definition, template } = await synthesizeDefinition(loaded));
  const put = (key: string, body: string) =>
    env.s3.client.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: key, Body: body }));
  // The last record repeats the first one's id: Settle drops it from its part and writes its error.
  await put(
    'inputs/iam/a.jsonl',
    [...Array.from({ length: 50 }, (_, i) => ({ id: `a${i}`, content: 'q' })), { id: 'a0', content: 'again' }]
      .map((r) => JSON.stringify(r))
      .join('\n'),
  );
  await put('inputs/iam/b.jsonl', '{"id":"b","content":"q"}');
  await put('inputs/iam/c.jsonl', '{"id":"c","content":"q"}');
  await put('inputs/iam/d.jsonl', '{"id":"d","content":"q"}');
  await runRecorded('inputs/iam/a.jsonl', 'iam-ok'); // the whole way, to Notify
  await runRecorded('inputs/iam/b.jsonl', 'iam-continue', { maxTicksPerExecution: 1 }); // hands over to a new execution
  await runRecorded('inputs/iam/c.jsonl', 'iam-costly', { maxCostUsd: 1e-9 }); // fails after Register: MarkFailed
  await runRecorded('inputs/iam/missing.jsonl', 'iam-missing'); // fails in Register
  // The same dataset again while iam-ok holds it: Register refuses it, and removes the plan it wrote.
  await runRecorded('inputs/iam/a.jsonl', 'iam-again');
  await runRecorded('inputs/iam/d.jsonl', 'iam-kept', { cleanUp: false }); // Finalize marks what it keeps
  // A failed run resumed: Register checks its parts' files (a Query), then it runs to its end.
  await runRecorded('', 'iam-costly-resumed', { input: { resumeRunId: 'iam-costly' } });
  // A prepared run that failed, resumed once its plan expired: Tick finds the plan gone (a 404, which
  // S3 answers only to a caller that may list the bucket) and collects its parts all the same.
  await put('inputs/iam/e.jsonl', '{"id":"e","content":"q"}');
  await runRecorded('inputs/iam/e.jsonl', 'iam-expired', { failFirstTick: true });
  await env.s3.client.send(
    new DeleteObjectCommand({ Bucket: env.s3.bucket, Key: runKeys('iam-expired').plan }),
  );
  await runRecorded('', 'iam-expired-resumed', { input: { resumeRunId: 'iam-expired' } });
  await deliverRecorded();
}, 120_000);

/**
 * The webhook receiver's calls: a delivery whose restart fails (the event is forgotten, for OpenAI's
 * retry), then the retry, which restarts the run and stops its waiting execution. Step Functions calls
 * are recorded at the receiver's control, which stands in for the SFN client here.
 */
async function deliverRecorded(): Promise<void> {
  webhookTemplate = (
    await synthesizeDefinition(
      await loadWork(new URL('../fixtures/works/webhooks.ts', import.meta.url).pathname),
    )
  ).template;
  const runs = new DynamoRunStore(env.dynamo.client, env.dynamo.table);
  await runs.createRun({ ...runFixture('iam-hooked'), status: 'running', waiting: 'iam-hooked' }, false);
  await runs.recordBatch('batch_iam', 'iam-hooked', 0);
  const secret = 'whsec_aWFtLXRlc3Qtc2lnbmluZy1zZWNyZXQ=';
  const body = JSON.stringify({
    id: 'evt_iam',
    type: 'batch.completed',
    created_at: 1,
    data: { id: 'batch_iam' },
  });
  let failStart = true;
  for (let delivery = 0; delivery < 2; delivery++) {
    await step.run('Webhook', () =>
      receiveWebhook(
        {
          runs,
          verify: openaiWebhookVerifier(async () => {
            record('GetSecretValueCommand');
            return secret;
          }),
          control: {
            start: async () => {
              record('StartExecutionCommand');
              if (failStart) {
                failStart = false;
                throw new Error('throttled');
              }
            },
            stop: async () => record('StopExecutionCommand'),
          },
          now: Date.now,
          log: () => {},
        },
        { body, headers: signWebhook(secret, 'evt_iam', Math.floor(Date.now() / 1000), body) },
      ),
    );
  }
}

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** The policy statements of the role of the function behind each state. */
function statementsOf(
  state: string,
  from: Template = state === 'Webhook' ? webhookTemplate : template,
): { Action: string | string[]; Resource: unknown }[] {
  const functions = from.findResources('AWS::Lambda::Function');
  const [fnId, fn] = Object.entries(functions).find(([id]) => id.startsWith(`Work${state}Function`)) ?? [];
  if (!fnId || !fn) throw new Error(`no function for ${state}`);
  const roleId = (fn.Properties.Role as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'][0];
  const policies = Object.values(from.findResources('AWS::IAM::Policy')).filter((p) =>
    (p.Properties.Roles as { Ref: string }[]).some((r) => r.Ref === roleId),
  );
  return policies.flatMap((p) => p.Properties.PolicyDocument.Statement);
}

const logicalId = (type: string) => Object.keys(template.findResources(type))[0] ?? '';

function grants(state: string, command: string): boolean {
  const need = ACTIONS[command];
  if (!need) throw new Error(`no IAM mapping for ${command}: add it to ACTIONS`);
  return statementsOf(state).some((s) => {
    const actions = Array.isArray(s.Action) ? s.Action : [s.Action];
    if (!actions.includes(need.action)) return false;
    const resources = JSON.stringify(s.Resource);
    switch (need.on) {
      case 'objects':
        return resources.includes(logicalId('AWS::S3::Bucket')) && resources.includes('/*');
      case 'bucket':
        return resources.includes(`{"Fn::GetAtt":["${logicalId('AWS::S3::Bucket')}","Arn"]}`);
      case 'table':
        return resources.includes(logicalId('AWS::DynamoDB::Table'));
      case 'index':
        return resources.includes('/index/byWork');
      case 'secret': {
        // The receiver reads the webhook signing secret; every other function the API key's.
        const own = state === 'Webhook' ? 'WorkWebhookSigningSecret' : 'WorkOpenAIApiKey';
        const secrets = Object.keys(
          (state === 'Webhook' ? webhookTemplate : template).findResources('AWS::SecretsManager::Secret'),
        );
        const id = secrets.find((s) => s.startsWith(own));
        return id !== undefined && resources.includes(id);
      }
      case 'bus':
        return resources.includes('event-bus/default');
      case 'topic':
        return resources.includes(logicalId('AWS::SNS::Topic'));
      case 'stateMachine':
        return resources.includes(logicalId('AWS::StepFunctions::StateMachine'));
      case 'executions':
        return (
          resources.includes(':execution:') &&
          resources.includes(logicalId('AWS::StepFunctions::StateMachine'))
        );
      default:
        return false;
    }
  });
}

describe('IAM least privilege', () => {
  it('recorded the calls of every state', () => {
    const states = new Set([...calls].map((c) => c.split(' ')[0]));
    expect([...states].sort()).toEqual([...TASKS, 'Webhook'].sort());
    for (const call of ['DeleteItemCommand', 'StartExecutionCommand', 'StopExecutionCommand'])
      expect(calls).toContain(`Webhook ${call}`);
    for (const call of ['ListObjectsCommand', 'PutObjectTaggingCommand'])
      expect(calls).toContain(`Finalize ${call}`);
    // Settle rewrote the part the duplicate was in.
    expect(calls).toContain('Settle PutObjectCommand');
    // Register looked for a failed run's files before it resumed it; Tick found a plan gone.
    expect(calls).toContain('Register QueryCommand');
    expect(calls).toContain('Tick GetObjectCommand#missing');
  });

  it('walked the resumes to their end: both failed runs completed once resumed', async () => {
    const runs = new DynamoRunStore(env.dynamo.client, env.dynamo.table);
    for (const runId of ['iam-costly', 'iam-expired'])
      expect((await runs.getRun(runId))?.status, runId).toBe('completed');
  });

  it('grants every call a state made to the function of that state, on its resource', () => {
    const missing = [...calls].filter((c) => {
      const [state = '', command = ''] = c.split(' ');
      return !grants(state, command);
    });
    expect(missing).toEqual([]);
  });

  it('names every action in full: no wildcard action in any function policy', () => {
    for (const state of [...TASKS, 'Webhook']) {
      for (const s of statementsOf(state)) {
        const actions = Array.isArray(s.Action) ? s.Action : [s.Action];
        expect(actions.filter((a) => a.includes('*') && !a.startsWith('xray:'))).toEqual([]);
      }
    }
  });

  it('knows the IAM action of every SDK command the functions send', () => {
    const sent = new Set<string>();
    const walk = (folder: string) => {
      for (const entry of readdirSync(folder, { withFileTypes: true })) {
        const path = join(folder, entry.name);
        if (entry.isDirectory()) walk(path);
        else if (entry.name.endsWith('.ts'))
          for (const m of readFileSync(path, 'utf8').matchAll(/new (\w+Command)\(/g))
            if (m[1]) sent.add(m[1]);
      }
    };
    walk(new URL('../../functions', import.meta.url).pathname);
    expect([...sent].filter((c) => !ACTIONS[c])).toEqual([]);
  });
});
