import { createReadStream, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { z } from 'zod';
import { ConfigError, DatasetError, messageOf } from '../functions/core/errors';
import { checkRunId } from '../functions/core/execution-names';
import { describeIssues } from '../functions/core/issues';
import { BLOCKED_REASONS, type BlockedReason } from '../functions/core/run';
import type { RunSummary } from '../functions/core/summary';
import { type Work, WorkSettingsSchema } from '../functions/core/work';
import { causeMessage } from '../functions/steps/finish';
import { type LoadedWork, loadWork } from '../infra/works';
import type { OpenAITarget } from './runner';

/** Why a run waits for OpenAI, as Tick logs it. */
const BlockedReasonSchema = z.enum(BLOCKED_REASONS);

/** Options of `openai-batch local`. */
export interface LocalCommandOptions {
  /** Where outputs.jsonl, errors.jsonl, summary.json and the stand-ins' data go. @default openai-batch-out/<run id> */
  readonly out?: string;
  /** Any OpenAI-compatible base URL instead of the emulator. */
  readonly openaiBaseUrl?: string;
  /** Overrides the work's maxRequestsPerBatch. */
  readonly maxRequestsPerBatch?: number;
  readonly runId?: string;
  /** Emulator pace (the demo keeps the defaults). */
  readonly emulator?: { readonly validationMs?: number; readonly requestsPerSecond?: number };
  /** The environment (OPENAI_API_KEY picks the real OpenAI). */
  readonly env?: NodeJS.ProcessEnv;
  readonly print: (line: string) => void;
}

/** How `local` ended: 0 completed, 1 the run failed, 2 the input was refused before the run. */
export interface LocalCommandResult {
  readonly exitCode: 0 | 1 | 2;
  readonly out?: string;
  readonly summary?: RunSummary;
}

/** The dataset files a path names: the file, or every non-empty file in the folder, by name. */
export function datasetFiles(path: string): string[] {
  let stat: ReturnType<typeof statSync>;
  try {
    stat = statSync(path);
  } catch {
    throw new DatasetError(`No dataset at ${path}: no such file or folder.`);
  }
  const files = stat.isDirectory()
    ? readdirSync(path)
        .filter((f) => !f.startsWith('.'))
        .sort()
        .map((f) => join(path, f))
        .filter((f) => statSync(f).isFile())
    : [path];
  if (files.length === 0) throw new DatasetError(`The dataset folder ${path} has no files.`);
  if (files.every((f) => statSync(f).size === 0)) throw new DatasetError(`The dataset ${path} is empty.`);
  return files;
}

/** The work with its maxRequestsPerBatch replaced, checked like any setting. */
function withMaxRequests(work: Work, maxRequestsPerBatch: number | undefined): Work {
  if (maxRequestsPerBatch === undefined) return work;
  const parsed = WorkSettingsSchema.safeParse({ ...work.settings, maxRequestsPerBatch });
  if (!parsed.success)
    throw new ConfigError(
      `--max-requests-per-batch: ${describeIssues(parsed.error, { ...work.settings, maxRequestsPerBatch }).join('; ')}`,
    );
  return { ...work, settings: parsed.data };
}

/** Where OpenAI is: a given URL, the real API when OPENAI_API_KEY is set, else the emulator. */
function openaiTarget(options: LocalCommandOptions): { target: OpenAITarget; label: string; real: boolean } {
  const key = options.env?.OPENAI_API_KEY;
  if (options.openaiBaseUrl) {
    return {
      target: { kind: 'url', baseURL: options.openaiBaseUrl, apiKey: key ?? 'sk-local' },
      label: options.openaiBaseUrl,
      real: !/127\.0\.0\.1|localhost/.test(options.openaiBaseUrl),
    };
  }
  if (key)
    return {
      target: { kind: 'url', baseURL: 'https://api.openai.com/v1', apiKey: key },
      label: 'OpenAI (OPENAI_API_KEY is set)',
      real: true,
    };
  return {
    target: {
      kind: 'emulator',
      options: {
        validationMs: options.emulator?.validationMs ?? 500,
        requestsPerSecond: options.emulator?.requestsPerSecond ?? 2000,
      },
    },
    label: 'the local OpenAI emulator',
    real: false,
  };
}

/**
 * Runs a work over a local dataset on this machine: the synthesized state machine with the same
 * handlers as in Lambda, S3 and DynamoDB stand-ins under `<out>/.state`, and the OpenAI emulator (or a
 * given URL, or the real OpenAI with OPENAI_API_KEY). Writes `<out>/outputs.jsonl`, `<out>/errors.jsonl`
 * and `<out>/summary.json`, and an images work's images to `<out>/images/`.
 */
export async function localCommand(
  workFile: string,
  dataset: string,
  options: LocalCommandOptions,
): Promise<LocalCommandResult> {
  const { print } = options;
  let loaded: LoadedWork;
  let files: string[];
  try {
    loaded = await loadWork(workFile);
    loaded = { ...loaded, work: withMaxRequests(loaded.work, options.maxRequestsPerBatch) };
    files = datasetFiles(dataset);
    if (options.runId !== undefined) checkRunId(options.runId);
  } catch (caught) {
    print(`error: ${messageOf(caught)}`);
    return { exitCode: 2 };
  }
  // Loaded once the arguments are known good (the CDK, the AWS SDK and the stand-ins take seconds to
  // load): a refused argument is said at once.
  const [
    { runLocally, startLocalEnvironment },
    { blockedLine, download },
    { S3BlobStore },
    { downloadImages },
  ] = await Promise.all([
    import('./runner'),
    import('./cloud-commands'),
    import('../functions/adapters/s3-blob-store'),
    import('./download-images'),
  ]);
  const name = loaded.work.settings.name;
  const runId =
    options.runId ??
    `${name}-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-')}`;
  const out = resolve(options.out ?? join('openai-batch-out', runId));
  mkdirSync(out, { recursive: true });
  const { target, label, real } = openaiTarget(options);
  print(`run ${runId}: work "${name}", ${files.length} dataset file(s), OpenAI: ${label}`);
  const env = await startLocalEnvironment(join(out, '.state'), target, true, {
    webhooks: loaded.work.settings.webhooks,
  });
  if (env.webhooks) print(`webhooks: the emulator signs and sends them to ${env.webhooks.url}`);
  try {
    const blobs = new S3BlobStore(env.s3.client, env.s3.bucket);
    const prefix = `inputs/${name}/${runId}/`;
    for (const file of files) {
      await blobs.write(`${prefix}${basename(file)}`, createReadStream(file));
    }
    const started = Date.now();
    let lastLine = '';
    const prepared = { records: 0, parts: 0 };
    // Why the run waits for OpenAI, as first seen (the message and time of the condition's start).
    let blocked: { reason: BlockedReason; message: string; since: string } | null = null;
    const result = await runLocally(
      env,
      loaded,
      files.length === 1 ? `${prefix}${basename(files[0] ?? '')}` : prefix,
      runId,
      {
        ...(real ? { waitMs: null } : { waitMs: 200 }),
        log: (message, fields = {}) => {
          const seconds = ((Date.now() - started) / 1000).toFixed(1);
          let line = '';
          if (message === 'prepare step') {
            prepared.records += Number(fields.records);
            prepared.parts += Number(fields.parts);
            line = `prepare: ${prepared.records} records read, ${prepared.parts} batch file(s) written`;
          }
          if (message === 'OpenAI cannot be used now; the run waits') {
            const reason = BlockedReasonSchema.safeParse(fields.reason);
            if (reason.success && blocked?.reason !== reason.data)
              blocked = {
                reason: reason.data,
                message: String(fields.error ?? ''),
                since: `${seconds}s into the run`,
              };
          }
          if (message === 'tick') {
            const total = ['pending', 'submitting', 'active', 'collecting', 'done'].reduce(
              (n, k) => n + Number(fields[k] ?? 0),
              0,
            );
            line = `batches: ${fields.done}/${total} done, ${fields.active} on OpenAI, ${fields.pending} waiting`;
            const reason = BlockedReasonSchema.safeParse(fields.blocked);
            if (!reason.success) blocked = null;
            else {
              if (blocked?.reason !== reason.data)
                blocked = { reason: reason.data, message: '', since: `${seconds}s into the run` };
              line += `; ${blockedLine(blocked, blocked.since)}`;
            }
          }
          if (message === 'run failed') line = `failed: ${fields.message}`;
          if (line && line !== lastLine) print(`[${seconds}s] ${line}`);
          if (line) lastLine = line;
        },
      },
    );
    if (!result.output) throw new Error('the run ended without output');
    const summaryKey = `runs/${runId}/summary.json`;
    const chunks: Uint8Array[] = [];
    for await (const chunk of blobs.read(summaryKey)) chunks.push(chunk);
    const summary = JSON.parse(Buffer.concat(chunks).toString('utf8')) as RunSummary;
    const outputs = await download(blobs, `runs/${runId}/outputs/`, join(out, 'outputs.jsonl'));
    const errors = await download(blobs, `runs/${runId}/errors/`, join(out, 'errors.jsonl'));
    const images = await downloadImages(blobs, runId, join(out, 'images'));
    const { counts } = summary;
    writeFileSync(
      join(out, 'summary.json'),
      `${JSON.stringify({ records: counts.records, outputs: counts.outputs, errors: counts.errors, skipped: counts.skippedRecords + counts.skippedOutputs, ...summary }, null, 2)}\n`,
    );
    print(
      `completed in ${((Date.now() - started) / 1000).toFixed(1)}s: ${counts.records} records -> ${outputs} outputs, ${errors} errors, ${counts.skippedRecords + counts.skippedOutputs} skipped (balanced: ${summary.reconciliation.balanced})`,
    );
    print(`  outputs: ${join(out, 'outputs.jsonl')}`);
    print(`  errors:  ${join(out, 'errors.jsonl')}`);
    if (images > 0) print(`  images:  ${join(out, 'images')} (${images}, named as their keys in outputs)`);
    print(`  summary: ${join(out, 'summary.json')}`);
    if (summary.cost.actualUsd !== null)
      print(
        `  cost at batch prices: $${summary.cost.actualUsd.toFixed(6)}${real ? '' : ' (if it had run on OpenAI)'}`,
      );
    return { exitCode: 0, out, summary };
  } catch (caught) {
    const message =
      caught instanceof Error
        ? causeMessage(caught.message.replace(/^Execution has failed with the following error: /, ''))
        : messageOf(caught);
    print(`error: the run failed: ${message}`);
    return { exitCode: 1, out };
  } finally {
    await env.stop();
  }
}
