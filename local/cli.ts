import { Command, InvalidArgumentError } from 'commander';
import { messageOf } from '../functions/core/errors';
import { runIdProblem } from '../functions/core/execution-names';
import type { CloudOptions } from './cloud-commands';
import { FAULT_KINDS, type FaultKind } from './emulator/faults';

// Each command loads its own modules when it runs: the emulator alone should not load the CDK.
const commands = {
  cloud: () => import('./cloud-commands'),
  emulator: () => import('./emulator/server'),
  estimate: () => import('./estimate'),
  local: () => import('./local-command'),
  works: () => import('../infra/works'),
};

/** The example work and the dataset the demo runs it over. */
const DEMO = {
  work: new URL('../works/example.ts', import.meta.url).pathname,
  dataset: new URL('../works/example.jsonl', import.meta.url).pathname,
};

const integer =
  (name: string, min = 0) =>
  (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`${name} must be a whole number of at least ${min}`);
    return n;
  };
const rate = (value: string) => {
  const n = Number(value);
  if (!(n >= 0 && n <= 1)) throw new InvalidArgumentError('must be between 0 and 1');
  return n;
};
/** A run id: the name of the run's first execution (1-80 characters Step Functions allows). */
const runIdArgument = (value: string) => {
  const problem = runIdProblem(value);
  if (problem) throw new InvalidArgumentError(problem);
  return value;
};
const kinds = (value: string): FaultKind[] => {
  const list = value.split(',').map((k) => k.trim());
  const unknown = list.filter((k) => !(FAULT_KINDS as readonly string[]).includes(k));
  if (unknown.length > 0)
    throw new InvalidArgumentError(
      `unknown fault kind ${unknown.join(', ')}; known: ${FAULT_KINDS.join(', ')}`,
    );
  return list as FaultKind[];
};

/** The `openai-batch` command line. */
export function cli(): Command {
  const program = new Command('openai-batch')
    .description('Run OpenAI Batch API jobs on AWS or on this machine.')
    .showHelpAfterError();

  program
    .command('emulator')
    .description('Start a local OpenAI Batch API emulator (Files + Batches) on 127.0.0.1.')
    .option('--port <n>', 'port to listen on (0 picks a free one)', integer('port'), 8787)
    .option('--data-dir <dir>', 'keep files and batches in this directory across restarts')
    .option('--seed <n>', 'seed for ids, answers and faults', integer('seed'))
    .option('--api-key <key>', 'accept only this bearer key (default: any non-empty key)')
    .option('--validation-ms <n>', 'time a batch spends validating', integer('validation-ms'), 1000)
    .option(
      '--requests-per-second <n>',
      'requests processed a second',
      integer('requests-per-second', 1),
      1000,
    )
    .option(
      '--completion-window-ms <n>',
      'completion window in ms (default 24 h)',
      integer('completion-window-ms', 1),
    )
    .option(
      '--enqueued-token-limit <n>',
      'fail a batch with token_limit_exceeded past this many enqueued tokens per model',
      integer('enqueued-token-limit', 1),
    )
    .option(
      '--max-requests-per-batch <n>',
      'requests allowed in one input file',
      integer('max-requests-per-batch', 1),
      50_000,
    )
    .option('--models <list>', 'comma-separated models the Batch API accepts (default: any)')
    .option('--fault-rate <r>', 'share of requests that get a fault (0 to 1)', rate, 0)
    .option('--fault-kinds <list>', `comma-separated fault kinds (${FAULT_KINDS.join(', ')})`, kinds)
    .option('--webhook-url <url>', 'POST signed batch.* events here')
    .option('--webhook-secret <secret>', 'signing secret for webhooks (whsec_...)')
    .action(async (opts) => {
      if (Boolean(opts.webhookUrl) !== Boolean(opts.webhookSecret)) {
        program.error('--webhook-url and --webhook-secret go together');
      }
      const { startEmulator } = await commands.emulator();
      const emulator = await startEmulator({
        port: opts.port,
        ...(opts.dataDir ? { dataDir: opts.dataDir } : {}),
        ...(opts.seed !== undefined ? { seed: opts.seed } : {}),
        ...(opts.apiKey ? { apiKey: opts.apiKey } : {}),
        validationMs: opts.validationMs,
        requestsPerSecond: opts.requestsPerSecond,
        ...(opts.completionWindowMs ? { completionWindowMs: opts.completionWindowMs } : {}),
        ...(opts.enqueuedTokenLimit ? { enqueuedTokenLimit: opts.enqueuedTokenLimit } : {}),
        maxRequestsPerBatch: opts.maxRequestsPerBatch,
        ...(opts.models ? { models: String(opts.models).split(',') } : {}),
        faults: {
          rate: opts.faultRate,
          ...(opts.faultKinds ? { kinds: opts.faultKinds } : {}),
          ...(opts.seed !== undefined ? { seed: opts.seed } : {}),
        },
        ...(opts.webhookUrl ? { webhook: { url: opts.webhookUrl, secret: opts.webhookSecret } } : {}),
      });
      console.log(`OpenAI Batch emulator listening on ${emulator.url}`);
      console.log(`Point a client at it: OPENAI_BASE_URL=${emulator.url} OPENAI_API_KEY=sk-local`);
      const stop = async (signal: string) => {
        console.log(`${signal}: stopping`);
        await emulator.stop();
        process.exit(0);
      };
      process.once('SIGINT', () => void stop('SIGINT'));
      process.once('SIGTERM', () => void stop('SIGTERM'));
    });

  program
    .command('local')
    .description(
      'Run a work over a local dataset on this machine: the deployed state machine, with local S3, DynamoDB and OpenAI (the emulator, a base URL, or the real API when OPENAI_API_KEY is set).',
    )
    .argument('<work-file>', 'the work module, e.g. works/example.ts')
    .argument('<dataset>', 'a JSONL file (gzip allowed) or a folder of them')
    .option(
      '--out <dir>',
      'where outputs.jsonl, errors.jsonl and summary.json go (default openai-batch-out/<run id>)',
    )
    .option(
      '--openai-base-url <url>',
      'an OpenAI-compatible API instead of the emulator (key from OPENAI_API_KEY)',
    )
    .option(
      '--max-requests-per-batch <n>',
      "override the work's maxRequestsPerBatch",
      integer('max-requests-per-batch', 1),
    )
    .option('--run-id <id>', 'name of the run, 1-80 characters (default <work>-<time>)', runIdArgument)
    .action(async (workFile: string, dataset: string, opts) => {
      const { localCommand } = await commands.local();
      const result = await localCommand(workFile, dataset, {
        ...(opts.out ? { out: opts.out } : {}),
        ...(opts.openaiBaseUrl ? { openaiBaseUrl: opts.openaiBaseUrl } : {}),
        ...(opts.maxRequestsPerBatch ? { maxRequestsPerBatch: opts.maxRequestsPerBatch } : {}),
        ...(opts.runId ? { runId: opts.runId } : {}),
        env: process.env,
        print: (line) => (line.startsWith('error:') ? console.error(line) : console.log(line)),
      });
      process.exitCode = result.exitCode;
    });

  program
    .command('demo')
    .description(
      'Run works/example.ts over works/example.jsonl on this machine against the emulator, end to end.',
    )
    .option('--out <dir>', 'where the results go (default openai-batch-out/<run id>, new for each run)')
    .action(async (opts) => {
      const { localCommand } = await commands.local();
      const result = await localCommand(DEMO.work, DEMO.dataset, {
        ...(opts.out ? { out: opts.out } : {}),
        runId: `demo-${Date.now().toString(36)}`,
        env: {},
        print: (line) => console.log(line),
      });
      process.exitCode = result.exitCode;
    });

  program
    .command('estimate')
    .description(
      'Count the requests, batches and input tokens a run would send (real tokenizer), and its cost at batch prices, before spending anything.',
    )
    .argument('<work-file>', 'the work module')
    .argument('<dataset>', 'a local JSONL file (gzip allowed)')
    .option('--json', 'print the estimate as JSON')
    .action(async (workFile: string, dataset: string, opts) => {
      try {
        const { work } = await (await commands.works()).loadWork(workFile);
        const { datasetFiles } = await commands.local();
        const [file] = datasetFiles(dataset);
        const figures = await (await commands.estimate()).estimate(work, file ?? dataset);
        if (opts.json) {
          console.log(JSON.stringify(figures, null, 2));
          return;
        }
        const dropped = [
          figures.unreadable ? `${figures.unreadable} unreadable` : '',
          figures.refused ? `${figures.refused} refused` : '',
        ].filter(Boolean);
        console.log(
          `${figures.records} records -> ${figures.requests} requests in ${figures.parts} batch(es)${dropped.length ? ` (${dropped.join(', ')}: \`local\` lists them with their lines)` : ''}`,
        );
        if (figures.invalidBodies.count > 0) {
          // Requests OpenAI would refuse (Prepare puts them in errors as invalid_request_body): say which.
          console.log(
            `${figures.invalidBodies.count} request(s) OpenAI would refuse; they end in errors as invalid_request_body:`,
          );
          for (const bad of figures.invalidBodies.first)
            console.log(
              `  line ${bad.line ?? '?'} (id ${bad.id ?? '?'}): '${bad.param}' ${bad.code}: ${bad.message}`,
            );
          if (figures.invalidBodies.count > figures.invalidBodies.first.length)
            console.log(`  ... and ${figures.invalidBodies.count - figures.invalidBodies.first.length} more`);
        }
        for (const m of figures.byModel) {
          console.log(
            `  ${m.model}: ${m.requests} requests, ${m.inputTokens} input tokens (${m.tokenizer}), ~${m.outputTokens} output tokens${m.priced ? '' : ' (no price known for this model)'}`,
          );
        }
        console.log(
          figures.costUsd === null
            ? 'cost: unknown (a model has no price in functions/core/prices.ts)'
            : `cost at batch prices: about $${figures.costUsd.toFixed(4)} (input exact; output assumes expectedOutputTokens = ${work.settings.expectedOutputTokens} a request)`,
        );
      } catch (caught) {
        console.error(`error: ${messageOf(caught)}`);
        process.exitCode = 2;
      }
    });

  /** Options that say where a deployed work is; endpoint flags reach local stand-ins. */
  const located = (command: Command) =>
    command
      .option('--work <name>', 'the work (its stack is OpenAIBatch-<name>)')
      .option('--stack <name>', 'the stack, when not OpenAIBatch-<work>')
      .option('--bucket <name>', "the work's bucket (skips reading the stack)")
      .option('--table <name>', "the work's run table (skips reading the stack)")
      .option('--state-machine-arn <arn>', "the work's state machine (skips reading the stack)")
      .option(
        '--region <region>',
        "AWS region (default: AWS_REGION, else AWS_DEFAULT_REGION, else the AWS profile's region)",
      )
      .option('--endpoint-url <url>', 'one endpoint for every AWS service')
      .option('--s3-endpoint <url>', 'S3 endpoint (for example a local stand-in)')
      .option('--dynamodb-endpoint <url>', 'DynamoDB endpoint')
      .option('--sfn-endpoint <url>', 'Step Functions endpoint');
  const cloud = (opts: Record<string, string | undefined>): CloudOptions =>
    Object.fromEntries(
      Object.entries({
        work: opts.work,
        stack: opts.stack,
        bucket: opts.bucket,
        table: opts.table,
        stateMachineArn: opts.stateMachineArn,
        region: opts.region,
        endpointUrl: opts.endpointUrl,
        s3Endpoint: opts.s3Endpoint,
        dynamodbEndpoint: opts.dynamodbEndpoint,
        sfnEndpoint: opts.sfnEndpoint,
      }).filter(([, v]) => v !== undefined),
    ) as CloudOptions;
  const guarded = (action: () => Promise<number | undefined>) => async () => {
    try {
      process.exitCode = (await action()) ?? 0;
    } catch (caught) {
      console.error(`error: ${messageOf(caught)}`);
      process.exitCode = 2;
    }
  };

  located(program.command('start'))
    .description(
      'Start a run of a deployed work: uploads a local dataset to its bucket, starts an execution, prints the run id and the console link.',
    )
    .argument('<work>', 'the work name')
    .argument(
      '<dataset>',
      'a local file (uploaded to uploads/<work>/<run-id>/, outside what autoStart watches), or s3://bucket/key, or a key in the bucket',
    )
    .option('--run-id <id>', 'the execution name, which is the run id (1-80 characters)', runIdArgument)
    .action((work: string, dataset: string, opts) =>
      guarded(async () => {
        await (await commands.cloud()).startRun(
          work,
          dataset,
          { ...cloud(opts), ...(opts.runId ? { runId: opts.runId } : {}) },
          (l) => console.log(l),
        );
        return 0;
      })(),
    );

  located(program.command('status'))
    .description(
      "The runs of a work; or one run's batches, with progress bars (requests done and failed of total, elapsed, ETA).",
    )
    .argument('[run-id]', 'the run to show')
    .option('--watch', 'redraw until the run ends')
    .option('--interval <seconds>', 'seconds between two redraws', (v) => Number(v), 5)
    .action((runId: string | undefined, opts) =>
      guarded(async () =>
        (await commands.cloud()).showStatus(
          runId,
          { ...cloud(opts), watch: Boolean(opts.watch), intervalMs: opts.interval * 1000 },
          { write: (t) => process.stdout.write(t), isTTY: Boolean(process.stdout.isTTY) },
        ),
      )(),
    );

  located(program.command('results'))
    .description("Download a run's outputs, errors and summary.")
    .argument('<run-id>')
    .option('--out <dir>', 'where to put outputs.jsonl, errors.jsonl and summary.json (default ./<run-id>)')
    .action((runId: string, opts) =>
      guarded(async () => {
        await (await commands.cloud()).downloadResults(runId, opts.out ?? runId, cloud(opts), (l) =>
          console.log(l),
        );
        return 0;
      })(),
    );

  located(program.command('resume'))
    .description(
      'Resume a run that failed: a new execution continues the same run (done parts stay done, nothing is paid twice) and takes its dataset again.',
    )
    .argument('<run-id>')
    .action((runId: string, opts) =>
      guarded(async () => {
        await (await commands.cloud()).resumeRun(runId, cloud(opts), (l) => console.log(l));
        return 0;
      })(),
    );

  located(program.command('cancel'))
    .description(
      'Cancel a run: its batches are cancelled on OpenAI, what finished is kept, the rest goes to errors, and the run ends cancelled.',
    )
    .argument('<run-id>')
    .action((runId: string, opts) =>
      guarded(async () => {
        await (await commands.cloud()).cancelRun(runId, cloud(opts), (l) => console.log(l));
        return 0;
      })(),
    );

  return program;
}
