import { Command, InvalidArgumentError } from 'commander';
import { FAULT_KINDS, type FaultKind } from './emulator/faults';
import { startEmulator } from './emulator/server';

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

  return program;
}
