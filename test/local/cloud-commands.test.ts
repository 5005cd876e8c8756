import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CreateBucketCommand,
  PutBucketNotificationConfigurationCommand,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import {
  CreateStateMachineCommand,
  DescribeExecutionCommand,
  ListExecutionsCommand,
  SFNClient,
} from '@aws-sdk/client-sfn';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import { zeroCounts } from '../../functions/core/accounting';
import { ConfigError } from '../../functions/core/errors';
import type { LaneCheckpoint, Part, Run } from '../../functions/core/run';
import { loadWork } from '../../infra/works';
import {
  deployed,
  executionConsoleUrl,
  MAX_BATCH_LINES,
  shardsDoneBy,
  statusLines,
} from '../../local/cloud-commands';
import { synthesizeDefinition } from '../../local/definition';
import { startEmulator } from '../../local/emulator/server';
import { type LocalEnvironment, runLocally, startLocalEnvironment } from '../../local/runner';
import { autoStartRuleToQueue, type Moto, motoClientConfig, motoSqs, startMoto } from '../support/moto';
import { partFixture, runFixture } from '../support/runs';
import { withEmulator } from '../support/targets';

/** The escape sequence status --watch redraws with: cursor up N lines, clear to the end. */
const REDRAW = new RegExp(`${String.fromCharCode(27)}\\[\\d+F${String.fromCharCode(27)}\\[J`);

let env: LocalEnvironment;
let dir: string;
let args: string[];
const credentials = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1' };

/** Runs `openai-batch ARGS`; with `tty`, inside a pseudo-terminal made by `script`; `env` over the credentials. */
function cli(
  cliArgs: string[],
  tty = false,
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const command = tty
    ? spawn(
        'script',
        [
          '-qec',
          [process.execPath, 'bin/openai-batch.js', ...cliArgs].map((a) => `'${a}'`).join(' '),
          '/dev/null',
        ],
        {
          env: { ...process.env, ...credentials, TERM: 'xterm', ...env },
        },
      )
    : spawn(process.execPath, ['bin/openai-batch.js', ...cliArgs], {
        env: { ...process.env, ...credentials, ...env },
      });
  let stdout = '';
  let stderr = '';
  command.stdout?.on('data', (c: Buffer) => {
    stdout += c.toString();
  });
  command.stderr?.on('data', (c: Buffer) => {
    stderr += c.toString();
  });
  return new Promise((resolve) => command.on('exit', (code) => resolve({ code, stdout, stderr })));
}

async function startRun(runId: string, records: number, target: LocalEnvironment = env) {
  const loaded = await loadWork(new URL('../fixtures/works/chat.ts', import.meta.url).pathname);
  const { definition } = await synthesizeDefinition(loaded);
  const body = Array.from({ length: records }, (_, i) =>
    JSON.stringify({ id: `${runId}-${i}`, content: `question ${i}` }),
  ).join('\n');
  await env.s3.client.send(
    new PutObjectCommand({ Bucket: env.s3.bucket, Key: `inputs/${runId}.jsonl`, Body: body }),
  );
  return runLocally(target, loaded, `inputs/${runId}.jsonl`, runId, { waitMs: 50 }, { definition });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-cloud-cli-'));
  env = await startLocalEnvironment(dir, {
    kind: 'emulator',
    options: { validationMs: 100, requestsPerSecond: 40, finalizingMs: 50, cancellingMs: 200, tickMs: 20 },
  });
  args = [
    '--work',
    'e2e-chat',
    '--bucket',
    env.s3.bucket,
    '--table',
    env.dynamo.table,
    '--s3-endpoint',
    env.s3.endpoint,
    '--dynamodb-endpoint',
    env.dynamo.endpoint,
  ];
});

afterAll(async () => {
  await env?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('status, results and cancel against the stand-ins', () => {
  it('status --watch draws progress bars in place on a terminal and finishes them', async () => {
    // 8 requests a second a batch: the run lasts about 5 s, so the watcher sees it under way.
    const slow = await startEmulator({
      validationMs: 50,
      requestsPerSecond: 8,
      finalizingMs: 20,
      tickMs: 20,
    });
    const running = startRun('watched', 80, withEmulator(env, slow)).finally(() => slow.stop());
    const { code, stdout } = await cli(['status', 'watched', '--watch', '--interval', '0.2', ...args], true);
    await running;
    expect(code).toBe(0);
    expect(stdout).toMatch(REDRAW); // moved up over the last frame and cleared it
    const frames = stdout.split(REDRAW);
    expect(frames.length).toBeGreaterThan(2);
    const last = frames.at(-1) ?? '';
    expect(last).toMatch(/run watched \(e2e-chat\): completed/);
    expect(last).toMatch(/batch 00000 \[#{24}\] 100% 40\/40 done, 0 failed {2}done/);
    expect(last).toMatch(/all {3}\[#{24}\] 100% 80\/80 requests/);
    expect(last).toMatch(/80 records -> 80 outputs, 0 errors: npx openai-batch results watched/);
    expect(stdout).toMatch(/\[#*-+\] +\d+% \d+\/40 done/); // a frame drawn while batches were under way
  });

  it("status prints plain lines when the output is not a terminal, and lists a work's runs", async () => {
    const one = await cli(['status', 'watched', ...args]);
    expect(one.code).toBe(0);
    expect(one.stdout).not.toContain('\x1b[');
    expect(one.stdout).toMatch(/all {3}\[#{24}\] 100% 80\/80 requests/);
    const list = await cli(['status', ...args]);
    expect(list.stdout).toMatch(/^watched {2}completed {2}\d{4}-\d\d-\d\dT[\d:.]+Z {2}80 records$/m);
  });

  it('results downloads outputs, errors and the summary of a run', async () => {
    const out = join(dir, 'results');
    const { code, stdout } = await cli(['results', 'watched', '--out', out, ...args]);
    expect(code).toBe(0);
    expect(stdout).toContain(`run watched (completed): 80 outputs, 0 errors -> ${out}`);
    expect(readFileSync(join(out, 'outputs.jsonl'), 'utf8').trim().split('\n')).toHaveLength(80);
    expect(JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'))).toMatchObject({
      runId: 'watched',
      counts: { outputs: 80 },
    });
  });

  it('cancel stops a run: batches cancelled on OpenAI, finished results kept, the rest in errors, run cancelled', async () => {
    // A slow OpenAI (2 requests a second a batch), so that the run is still going when the command lands.
    const slow = await startEmulator({
      validationMs: 50,
      requestsPerSecond: 2,
      finalizingMs: 20,
      cancellingMs: 200,
      tickMs: 20,
    });
    const target = withEmulator(env, slow);
    const running = startRun('stopped', 120, target).finally(() => slow.stop());
    for (;;) {
      const status = await cli(['status', 'stopped', ...args]);
      if (/\] +\d+% [1-9]\d*\/40 done/.test(status.stdout)) break; // a batch has progressed
      await new Promise((r) => setTimeout(r, 100));
    }
    const cancelled = await cli(['cancel', 'stopped', ...args]);
    expect(cancelled.stdout).toMatch(
      /cancel requested for run stopped: at its next tick it cancels its \d batch\(es\) on OpenAI/,
    );
    await running;
    const { stdout } = await cli(['status', 'stopped', ...args]);
    expect(stdout).toMatch(/run stopped \(e2e-chat\): cancelled/);
    const out = join(dir, 'stopped');
    await cli(['results', 'stopped', '--out', out, ...args]);
    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(summary).toMatchObject({ status: 'cancelled', reconciliation: { balanced: true } });
    expect(summary.counts.outputs).toBeGreaterThan(0);
    expect(summary.counts.outputs).toBeLessThan(120);
    const codes = new Set(
      readFileSync(join(out, 'errors.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).code),
    );
    expect([...codes].every((c) => c === 'batch_cancelled' || c === 'run_cancelled')).toBe(true);
    const again = await cli(['cancel', 'stopped', ...args]);
    expect(again.stdout).toContain('run stopped has already ended (cancelled); nothing to cancel.');
  });

  it('says so when a run does not exist, with exit 2', async () => {
    const { code, stderr } = await cli(['status', 'no-such-run', ...args]);
    expect(code).toBe(2);
    expect(stderr).toContain(`error: No run no-such-run in table ${env.dynamo.table}.`);
  });
});

/** A StartExecution call a fake Step Functions endpoint received. */
interface StartCall {
  readonly target: string;
  readonly body: { stateMachineArn: string; name: string; input: string };
}

/**
 * No Step Functions server stand-in exists (aws-local-stepfunctions is a library): a fake endpoint that
 * records the StartExecution calls a command makes and answers as Step Functions does, with the execution
 * ARN `executionArn` makes of the call's name.
 */
async function fakeStepFunctions(executionArn: (name: string) => string) {
  const received: StartCall[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => {
      body += c;
    });
    req.on('end', () => {
      const call = { target: String(req.headers['x-amz-target']), body: JSON.parse(body) };
      received.push(call);
      res.writeHead(200, { 'content-type': 'application/x-amz-json-1.0' });
      res.end(JSON.stringify({ executionArn: executionArn(call.body.name), startDate: 1795570000 }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received,
    close: () => server.close(),
  };
}

describe('start', () => {
  it("uploads a local dataset to the work's bucket and starts an execution named by the run id", async () => {
    const fake = await fakeStepFunctions(
      (name) => `arn:aws:states:us-east-1:123456789012:execution:run:${name}`,
    );
    try {
      const dataset = join(dir, 'to-upload.jsonl');
      writeFileSync(dataset, '{"id":"1","content":"hi"}\n');
      const arn = 'arn:aws:states:us-east-1:123456789012:stateMachine:run';
      const { code, stdout, stderr } = await cli([
        'start',
        'e2e-chat',
        dataset,
        '--run-id',
        'first',
        '--state-machine-arn',
        arn,
        '--sfn-endpoint',
        fake.endpoint,
        ...args.slice(2),
      ]);
      expect(stderr).toBe('');
      expect(code).toBe(0);
      expect(stdout).toContain(
        `uploaded ${dataset} (26 bytes) to s3://openai-batch-local/uploads/e2e-chat/first/to-upload.jsonl`,
      );
      expect(stdout).toContain('run first started');
      expect(stdout).toContain(
        'console:   https://us-east-1.console.aws.amazon.com/states/home?region=us-east-1#/v2/executions/details/arn:aws:states:us-east-1:123456789012:execution:run:first',
      );
      expect(fake.received).toEqual([
        {
          target: 'AWSStepFunctions.StartExecution',
          body: {
            stateMachineArn: arn,
            name: 'first',
            input: '{"dataset":"s3://openai-batch-local/uploads/e2e-chat/first/to-upload.jsonl"}',
          },
        },
      ]);
    } finally {
      fake.close();
    }
  });
});

describe('the console link', () => {
  it.each([
    ['aws', 'eu-west-1', 'https://eu-west-1.console.aws.amazon.com'],
    ['aws-cn', 'cn-north-1', 'https://console.amazonaws.cn'],
    ['aws-us-gov', 'us-gov-west-1', 'https://console.amazonaws-us-gov.com'],
  ])(
    "is on the console of the execution's partition (%s) and in its region",
    (partition, region, console) => {
      const execution = `arn:${partition}:states:${region}:123456789012:execution:run:r1`;
      expect(executionConsoleUrl(execution)).toBe(
        `${console}/states/home?region=${region}#/v2/executions/details/${execution}`,
      );
    },
  );

  it('is left out for a partition whose console is not known here, rather than made up', () => {
    expect(executionConsoleUrl('arn:aws-iso:states:us-iso-east-1:123456789012:execution:run:r1')).toBeNull();
  });

  it('start prints the link of its partition: an execution in aws-cn is on console.amazonaws.cn', async () => {
    const fake = await fakeStepFunctions(
      (name) => `arn:aws-cn:states:cn-north-1:123456789012:execution:run:${name}`,
    );
    try {
      const { code, stdout, stderr } = await cli([
        'start',
        'e2e-chat',
        `s3://${env.s3.bucket}/inputs/e2e-chat/a.jsonl`, // not a local file: nothing uploaded
        '--run-id',
        'in-china',
        '--state-machine-arn',
        'arn:aws-cn:states:cn-north-1:123456789012:stateMachine:run',
        '--region',
        'cn-north-1',
        '--sfn-endpoint',
        fake.endpoint,
        ...args.slice(2),
      ]);
      expect(stderr).toBe('');
      expect(code).toBe(0);
      expect(stdout).toContain(
        'console:   https://console.amazonaws.cn/states/home?region=cn-north-1#/v2/executions/details/arn:aws-cn:states:cn-north-1:123456789012:execution:run:in-china',
      );
      expect(fake.received).toHaveLength(1);
    } finally {
      fake.close();
    }
  });
});

describe('start on a stack with autoStart (moto_server: S3 -> EventBridge, Step Functions)', () => {
  const bucket = 'autostart-bucket';
  const work = 'e2e-chat';
  let moto: Moto;
  let sfn: SFNClient;
  let stateMachineArn: string;
  /** SQS at moto: the autoStart rule's target here, to see what it started. */
  const sqs = (action: string, body: Record<string, unknown>) => motoSqs(moto.endpoint, action, body);
  let queueUrl: string;

  beforeAll(async () => {
    moto = await startMoto();
    const aws = motoClientConfig(moto.endpoint);
    const s3 = new S3Client({ ...aws, forcePathStyle: true });
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    await s3.send(
      new PutBucketNotificationConfigurationCommand({
        Bucket: bucket,
        NotificationConfiguration: { EventBridgeConfiguration: {} },
      }),
    );
    // The stack's autoStart rule; a queue stands for the runs it would start.
    queueUrl = await autoStartRuleToQueue(moto.endpoint, bucket, work, 'auto-started');
    sfn = new SFNClient(aws);
    stateMachineArn =
      (
        await sfn.send(
          new CreateStateMachineCommand({
            name: `OpenAIBatch-${work}`,
            definition: JSON.stringify({
              StartAt: 'Register',
              States: { Register: { Type: 'Pass', End: true } },
            }),
            roleArn: 'arn:aws:iam::123456789012:role/states',
          }),
        )
      ).stateMachineArn ?? '';
    // The rule does fire for an object under inputs/<work>/ (so the test below can see a second run).
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `inputs/${work}/probe.jsonl`, Body: '{}\n' }));
    const { Messages = [] } = (await sqs('ReceiveMessage', {
      QueueUrl: queueUrl,
      MaxNumberOfMessages: 10,
    })) as {
      Messages?: unknown[];
    };
    expect(Messages).toHaveLength(1);
  }, 30_000);
  afterAll(() => moto?.stop());

  it.each([
    ['with --run-id', ['--run-id', 'chosen']],
    ['without --run-id', []],
  ])(
    'uploads a local dataset, and exactly one run exists: the one whose id it prints (%s)',
    async (_, runIdArgs: string[]) => {
      const dataset = join(dir, 'autostarted.jsonl');
      writeFileSync(dataset, '{"id":"1","content":"hi"}\n');
      const { code, stdout, stderr } = await cli([
        'start',
        work,
        dataset,
        ...runIdArgs,
        '--bucket',
        bucket,
        '--table',
        'runs',
        '--state-machine-arn',
        stateMachineArn,
        '--s3-endpoint',
        moto.endpoint,
        '--sfn-endpoint',
        moto.endpoint,
      ]);
      expect(stderr).toBe('');
      expect(code).toBe(0);
      const printed = stdout.match(/^run (\S+) started$/m)?.[1];
      expect(printed).toBeDefined();
      if (runIdArgs.length > 0) expect(printed).toBe('chosen');
      // No run started by the upload: the rule saw nothing.
      const { Messages = [] } = (await sqs('ReceiveMessage', {
        QueueUrl: queueUrl,
        MaxNumberOfMessages: 10,
      })) as {
        Messages?: unknown[];
      };
      expect(Messages).toEqual([]);
      // One execution of the state machine for this dataset: the one printed, reading the upload.
      const executions = (await sfn.send(new ListExecutionsCommand({ stateMachineArn }))).executions ?? [];
      const mine = executions.filter((e) => e.name === printed);
      expect(mine).toHaveLength(1);
      const { input } = await sfn.send(new DescribeExecutionCommand({ executionArn: mine[0]?.executionArn }));
      expect(JSON.parse(input ?? '{}')).toEqual({
        dataset: `s3://${bucket}/uploads/${work}/${printed}/autostarted.jsonl`,
      });
      expect(stdout).toContain(
        `uploaded ${dataset} (26 bytes) to s3://${bucket}/uploads/${work}/${printed}/`,
      );
    },
  );
});

describe('resume', () => {
  it('starts an execution that resumes a failed run, and refuses one that completed or was cancelled', async () => {
    const fake = await fakeStepFunctions(
      (name) => `arn:aws:states:us-east-1:123456789012:execution:run:${name}`,
    );
    try {
      const runs = new DynamoRunStore(env.dynamo.client, env.dynamo.table);
      const run = (runId: string, status: 'failed' | 'completed' | 'cancelled') =>
        runs.createRun(
          {
            ...runFixture(runId),
            work: 'e2e-chat',
            bucket: env.s3.bucket,
            dataset: { ...runFixture(runId).dataset, key: 'inputs/e2e-chat/a.jsonl', bytes: 9 },
            status,
            error: status === 'failed' ? 'InvariantError: it broke' : null,
          },
          false,
        );
      await run('broken', 'failed');
      await run('finished', 'completed');
      await run('called-off', 'cancelled');
      const arn = 'arn:aws:states:us-east-1:123456789012:stateMachine:run';
      const resume = (runId: string) =>
        cli(['resume', runId, '--state-machine-arn', arn, '--sfn-endpoint', fake.endpoint, ...args]);
      const resumed = await resume('broken');
      expect(resumed.stderr).toBe('');
      expect(resumed.code).toBe(0);
      expect(resumed.stdout).toContain('run broken resumed (it had failed: InvariantError: it broke)');
      expect(resumed.stdout).toContain('watch it:  npx openai-batch status broken --work e2e-chat --watch');
      expect(fake.received.map((call) => call.body)).toEqual([
        {
          stateMachineArn: arn,
          name: expect.stringMatching(/^broken-resume-[0-9a-z]+$/),
          input: '{"resumeRunId":"broken","dataset":"s3://openai-batch-local/inputs/e2e-chat/a.jsonl"}',
        },
      ]);
      const completed = await resume('finished');
      expect(completed.code).toBe(2);
      expect(completed.stderr).toContain(
        'error: Run finished has completed: there is nothing to resume. Its results: npx openai-batch results finished',
      );
      const cancelled = await resume('called-off');
      expect(cancelled.code).toBe(2);
      expect(cancelled.stderr).toContain(
        'error: Run called-off was cancelled: a cancelled run is not resumed.',
      );
      const missing = await resume('never-ran');
      expect(missing.stderr).toContain(`error: No run never-ran in table ${env.dynamo.table}.`);
      expect(fake.received).toHaveLength(1); // nothing started for the refused ones
    } finally {
      fake.close();
    }
  });
});

/** Sets (or, for undefined, deletes) environment variables around `action`, and puts them back after. */
async function withEnv<T>(vars: NodeJS.ProcessEnv, action: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((name) => [name, process.env[name]]));
  const apply = (values: NodeJS.ProcessEnv) => {
    for (const [name, value] of Object.entries(values))
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
  };
  apply(vars);
  try {
    return await action();
  } finally {
    apply(saved);
  }
}

describe('the region the commands use', () => {
  const profiles = '[default]\nregion = eu-west-1\n\n[profile other]\nregion = ap-south-1\n';
  let configs = 0;
  /**
   * The environment of a machine where `aws configure` wrote `config` and nothing else names a region: no
   * AWS_REGION, AWS_DEFAULT_REGION or AWS_PROFILE, no credentials file. Each config is a file of its own,
   * as the SDK keeps a file it has read by its path.
   */
  const configured = (config: string): NodeJS.ProcessEnv => {
    const file = join(dir, `aws-config-${configs++}`);
    writeFileSync(file, config);
    return {
      AWS_CONFIG_FILE: file,
      AWS_SHARED_CREDENTIALS_FILE: join(dir, 'no-aws-credentials'),
      AWS_REGION: undefined,
      AWS_DEFAULT_REGION: undefined,
      AWS_PROFILE: undefined,
    };
  };
  /** The region `deployed` says and its Step Functions client signs for; every resource is a flag, so nothing is called. */
  const regionWith = (env: NodeJS.ProcessEnv, region?: string) =>
    withEnv(env, async () => {
      const cloud = await deployed(
        {
          bucket: 'b',
          table: 't',
          stateMachineArn: 'arn:aws:states:eu-west-1:123456789012:stateMachine:run',
          ...(region ? { region } : {}),
        },
        true,
      );
      expect(await cloud.sfn.config.region()).toBe(cloud.region);
      return cloud.region;
    });

  it("is the profile's region when no variable names one (`aws configure`, nothing exported), AWS_PROFILE's if set", async () => {
    expect(await regionWith(configured(profiles))).toBe('eu-west-1');
    expect(await regionWith({ ...configured(profiles), AWS_PROFILE: 'other' })).toBe('ap-south-1');
  });

  it('is --region over everything, then AWS_REGION, then AWS_DEFAULT_REGION (as the AWS CLI and cdk deploy read it), then the profile', async () => {
    const variables = { AWS_REGION: 'us-west-2', AWS_DEFAULT_REGION: 'eu-north-1' };
    expect(await regionWith({ ...configured(profiles), ...variables }, 'ca-central-1')).toBe('ca-central-1');
    expect(await regionWith({ ...configured(profiles), ...variables })).toBe('us-west-2');
    expect(await regionWith({ ...configured(profiles), AWS_DEFAULT_REGION: 'eu-north-1' })).toBe(
      'eu-north-1',
    );
  });

  it('is refused, with what to do, when nothing names one (not a silent us-east-1)', async () => {
    const refusal = (env: NodeJS.ProcessEnv) => regionWith(env).catch((caught: unknown) => caught);
    const none = await refusal(configured(''));
    expect(none).toBeInstanceOf(ConfigError);
    expect((none as Error).message).toMatch(
      /^No AWS region: pass --region, set AWS_REGION, or give the profile default a region \(`aws configure set region <region>`\)\. The AWS SDK said: /,
    );
    // A profile without a region (or not in the file) is named, and so is the command that gives it one.
    expect(String(await refusal({ ...configured(profiles), AWS_PROFILE: 'work' }))).toContain(
      'give the profile work a region (`aws configure set region <region> --profile work`)',
    );
  });

  it("status looks for the stack in the profile's region, signs for it, and says which region it looked in", async () => {
    // CloudFormation's answer for a stack that is not in the region asked.
    const signedFor: (string | undefined)[] = [];
    const fake = createServer((req, res) => {
      signedFor.push(credentialScopeRegion(req.headers));
      req.resume().on('end', () => {
        res.writeHead(400, { 'content-type': 'text/xml' });
        res.end(
          '<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code><Message>Stack with id OpenAIBatch-e2e-chat does not exist</Message></Error><RequestId>1</RequestId></ErrorResponse>',
        );
      });
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    try {
      const endpoint = `http://127.0.0.1:${(fake.address() as AddressInfo).port}`;
      const { code, stderr } = await cli(
        ['status', '--work', 'e2e-chat', '--endpoint-url', endpoint],
        false,
        configured(profiles),
      );
      expect(code).toBe(2);
      expect(stderr).toContain(
        'error: Cannot read the stack OpenAIBatch-e2e-chat in eu-west-1: Stack with id OpenAIBatch-e2e-chat does not exist.',
      );
      expect(signedFor).toEqual(['eu-west-1']);
    } finally {
      fake.close();
    }
  });
});

/** The region a SigV4-signed request is signed for: the third field of its credential scope. */
function credentialScopeRegion(headers: IncomingHttpHeaders): string | undefined {
  return /Credential=[^/]+\/\d{8}\/([^/]+)\//.exec(headers.authorization ?? '')?.[1];
}

describe('status of a run of many batches', () => {
  it(`draws a bar for at most ${MAX_BATCH_LINES} batches, those not done first, and counts the rest in one line`, () => {
    const at = Date.UTC(2026, 10, 27, 9, 0);
    const parts = Array.from({ length: 2_000 }, (_, part) => {
      const status = part % 100 === 7 ? 'active' : part >= 1_990 ? 'pending' : 'done';
      return { ...partFixture({ part, requests: 10 }), status } as Part;
    });
    const lines = statusLines(
      { ...runFixture('many', 'h', at - 60_000), status: 'running', prepared: true },
      parts,
      at,
    );
    const bars = lines.filter((l) => l.startsWith('  batch '));
    expect(bars).toHaveLength(MAX_BATCH_LINES);
    // The 20 active ones (every hundredth, at 7) come first; nothing done is drawn.
    expect(bars.every((l) => / {2}active$/.test(l))).toBe(true);
    expect(lines).toContain('  ... and 1,980 more batches (1,970 done, 10 pending)');
    // The whole run's bar still counts every batch.
    expect(lines.find((l) => l.startsWith('  all '))).toContain('/20000 requests');
    // Few batches: each drawn, as before.
    expect(
      statusLines(
        { ...runFixture('few', 'h', at), status: 'running', prepared: true },
        parts.slice(0, 3),
        at,
      ).filter((l) => l.startsWith('  batch ')),
    ).toHaveLength(3);
  });
});

describe('status of a run that waits for OpenAI', () => {
  const since = Date.UTC(2026, 10, 26, 12, 3);
  const waiting = (blocked: NonNullable<Run['blocked']>, status: Run['status'] = 'running') =>
    statusLines(
      { ...runFixture('stuck', 'h', since - 60_000), status, prepared: true, blocked },
      [],
      since + 300_000,
    );

  it('says plainly why and since when: a refused key, an outage, an exhausted quota', () => {
    expect(
      waiting({
        reason: 'key_refused',
        message: 'OpenAI refused the API key: Incorrect API key provided: sk-wro*****ong.',
        since,
      }),
    ).toContain(
      '  waiting: OpenAI refused the API key since 12:03 UTC, 5m00s ago (Incorrect API key provided: sk-wro*****ong.); put a working key in the secret; the run goes on by itself',
    );
    expect(
      waiting({
        reason: 'openai_unavailable',
        message: 'OpenAI is unavailable: 503 The server is overloaded or not ready yet.',
        since,
      }),
    ).toContain(
      '  waiting: OpenAI unavailable since 12:03 UTC, 5m00s ago (503 The server is overloaded or not ready yet.); the run goes on when OpenAI answers again',
    );
    expect(
      waiting({ reason: 'quota_exhausted', message: 'You exceeded your current quota.', since }),
    ).toContain(
      "  waiting: OpenAI refused for the account's quota or billing limit since 12:03 UTC, 5m00s ago (You exceeded your current quota.); raise the limit or add credit; the run goes on by itself",
    );
  });

  it('names the day when it began on another, and says nothing once the run has ended', () => {
    const yesterday = since - 24 * 3600_000;
    expect(waiting({ reason: 'key_refused', message: 'refused', since: yesterday }).join('\n')).toContain(
      'since 2026-11-25 12:03 UTC, 24h05m ago (refused)',
    );
    expect(waiting({ reason: 'key_refused', message: 'refused', since }, 'failed').join('\n')).not.toContain(
      'waiting:',
    );
  });
});

describe('status of a run that is preparing', () => {
  const at = Date.UTC(2026, 10, 26, 12, 0);
  const preparing = (fields: Partial<Run>): Run => ({
    ...runFixture('big', 'h', at),
    status: 'preparing',
    prepared: false,
    dataset: {
      key: 'inputs/big/',
      objects: 3,
      bytes: 10,
      shards: 10,
      planWidth: 99,
      objectWidth: 0,
      partitions: 4,
      lanes: 3,
    },
    ...fields,
  });
  const lane = (l: number, shard: number, done = false): LaneCheckpoint => ({
    lane: l,
    shard,
    position: null,
    starts: [],
    nextPart: 0,
    inflated: false,
    counts: zeroCounts(),
    estimatedTokens: 0,
    done,
    firstShardSettled: false,
    firstPartsSent: false,
    firstShardLeft: false,
  });

  it('counts the shards each lane has finished: those of its shards before the one it is on', () => {
    // 10 shards, 3 lanes: lane 0 has 0, 3, 6, 9; lane 1 has 1, 4, 7; lane 2 has 2, 5, 8.
    expect(shardsDoneBy(lane(0, 0), 3, 10)).toBe(0);
    expect(shardsDoneBy(lane(0, 6), 3, 10)).toBe(2);
    expect(shardsDoneBy(lane(0, 9, true), 3, 10)).toBe(4);
    expect(shardsDoneBy(lane(1, 7), 3, 10)).toBe(2);
    expect(shardsDoneBy(lane(2, 8, true), 3, 10)).toBe(3);
    expect(shardsDoneBy(lane(2, 2), 3, 10)).toBe(0);
  });

  it('shows the records the lanes read and the shards they finished, then what Settle is doing', () => {
    expect(statusLines(preparing({}), [], at + 60_000, { records: 1_234_567, shardsDone: 4 })).toContain(
      '  preparing: 1,234,567 records read (4 of 10 shard(s), 3 at a time), 0 batch file(s) written',
    );
    const settling = statusLines(
      preparing({
        counts: { ...zeroCounts(), records: 2_000_000 },
        settle: { stage: 'dedup', partition: 1, part: 0, duplicates: 12, firstShardSettled: false },
      }),
      [],
      at + 60_000,
    );
    expect(settling).toContain(
      '  preparing: 2,000,000 records read (all 10 shard(s)), 0 batch file(s) written',
    );
    expect(settling).toContain(
      '  settling: looking for ids used more than once (partition 2 of 4), 12 found',
    );
  });
});
