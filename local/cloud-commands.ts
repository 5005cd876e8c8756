import { createReadStream, createWriteStream, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { CloudFormationClient, DescribeStacksCommand } from '@aws-sdk/client-cloudformation';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { S3Client } from '@aws-sdk/client-s3';
import { SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { DynamoRunStore } from '../functions/adapters/dynamo-run-store';
import { S3BlobStore } from '../functions/adapters/s3-blob-store';
import { ConfigError, messageOf } from '../functions/core/errors';
import { checkRunId, executionName } from '../functions/core/execution-names';
import type { BlobStore } from '../functions/core/ports';
import type { LaneCheckpoint, Part, Run } from '../functions/core/run';
import { runCounts } from '../functions/core/summary';
import { updateRun } from '../functions/steps/runs';
import { laneCheckpoint } from '../functions/steps/storage';

/** Where a deployed work is, and how to reach it. */
export interface CloudOptions {
  readonly work?: string;
  /** @default OpenAIBatch-<work> */
  readonly stack?: string;
  readonly bucket?: string;
  readonly table?: string;
  readonly stateMachineArn?: string;
  readonly region?: string;
  /** One endpoint for every AWS service (LocalStack and the like). */
  readonly endpointUrl?: string;
  readonly s3Endpoint?: string;
  readonly dynamodbEndpoint?: string;
  readonly sfnEndpoint?: string;
}

/** A deployed work's resources. */
export interface Deployed {
  readonly bucket: string;
  readonly table: string;
  readonly stateMachineArn: string | null;
  /** The region the clients use, as the SDK resolved it. */
  readonly region: string;
  readonly blobs: S3BlobStore;
  readonly runs: DynamoRunStore;
  readonly sfn: SFNClient;
}

/**
 * The region to give the AWS clients: `--region`, else AWS_DEFAULT_REGION when AWS_REGION is unset, else
 * none, so that the SDK finds it itself (AWS_REGION, then the `region` of the profile: AWS_PROFILE or
 * default, in AWS_CONFIG_FILE or ~/.aws/config). The JS SDK ignores AWS_DEFAULT_REGION, but the AWS CLI
 * and `cdk deploy`, which put the stack in its region, read it before the profile's: so does this.
 */
function regionSetting(flag: string | undefined): { region?: string } {
  const region = flag ?? (process.env.AWS_REGION ? undefined : process.env.AWS_DEFAULT_REGION);
  return region ? { region } : {};
}

/** The region a client resolved; when none is configured, a ConfigError that says how to give one. */
async function regionOf(client: SFNClient): Promise<string> {
  try {
    return await client.config.region();
  } catch (caught) {
    const profile = process.env.AWS_PROFILE ?? 'default';
    throw new ConfigError(
      `No AWS region: pass --region, set AWS_REGION, or give the profile ${profile} a region (\`aws configure set region <region>${profile === 'default' ? '' : ` --profile ${profile}`}\`). The AWS SDK said: ${messageOf(caught)}`,
    );
  }
}

/**
 * Finds a work's bucket, table and state machine: from flags when given, else from the outputs of its
 * stack (`OpenAIBatch-<work>`), with the default AWS credential chain, and the region from `--region` or
 * the SDK's chain (see {@link regionSetting}).
 */
export async function deployed(options: CloudOptions, needStateMachine: boolean): Promise<Deployed> {
  const region = regionSetting(options.region);
  const endpoint = (specific?: string) => specific ?? options.endpointUrl;
  const sfnEndpoint = endpoint(options.sfnEndpoint);
  const sfn = new SFNClient({ ...region, ...(sfnEndpoint ? { endpoint: sfnEndpoint } : {}) });
  // Every client is given the same setting, so the one resolved here is theirs.
  const resolved = await regionOf(sfn);
  let { bucket, table, stateMachineArn } = options;
  if (!bucket || !table || (needStateMachine && !stateMachineArn)) {
    const stack = options.stack ?? (options.work ? `OpenAIBatch-${options.work}` : undefined);
    if (!stack)
      throw new ConfigError(
        'Name the work (--work NAME) or its stack (--stack NAME), or give --bucket and --table.',
      );
    const cfnEndpoint = endpoint();
    const cfn = new CloudFormationClient({ ...region, ...(cfnEndpoint ? { endpoint: cfnEndpoint } : {}) });
    const { Stacks } = await cfn
      .send(new DescribeStacksCommand({ StackName: stack }))
      .catch((caught: unknown) => {
        throw new ConfigError(
          `Cannot read the stack ${stack} in ${resolved}: ${(caught as Error).message}. Deploy it with \`npx cdk deploy ${stack}\`, or pass --bucket, --table and --state-machine-arn.`,
        );
      });
    const outputs = Stacks?.[0]?.Outputs ?? [];
    const find = (name: string) =>
      outputs.find((o) => o.OutputKey?.replace(/[0-9A-F]{8}$/, '').endsWith(name))?.OutputValue;
    bucket ??= find('BucketName');
    table ??= find('TableName');
    stateMachineArn ??= find('StateMachineArn');
    if (!bucket || !table)
      throw new ConfigError(
        `The stack ${stack} has no BucketName and TableName outputs: is it an openai-batch stack?`,
      );
  }
  const s3Endpoint = endpoint(options.s3Endpoint);
  const dbEndpoint = endpoint(options.dynamodbEndpoint);
  const s3 = new S3Client({
    ...region,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    ...(s3Endpoint ? { endpoint: s3Endpoint, forcePathStyle: true } : {}),
  });
  return {
    bucket,
    table,
    stateMachineArn: stateMachineArn ?? null,
    region: resolved,
    blobs: new S3BlobStore(s3, bucket),
    runs: new DynamoRunStore(
      new DynamoDBClient({ ...region, ...(dbEndpoint ? { endpoint: dbEndpoint } : {}) }),
      table,
    ),
    sfn,
  };
}

/** Streams every object under a prefix into one local file; resolves with the lines written. */
export async function download(blobs: S3BlobStore, prefix: string, file: string): Promise<number> {
  const out = createWriteStream(file);
  let lines = 0;
  for await (const object of blobs.list(prefix)) {
    for await (const chunk of blobs.read(object.key)) {
      for (let at = chunk.indexOf(10); at !== -1; at = chunk.indexOf(10, at + 1)) lines += 1;
      if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
    }
  }
  await new Promise<void>((resolve, reject) =>
    out.end((error?: Error | null) => (error ? reject(error) : resolve())),
  );
  return lines;
}

/** A run of the deployed work, or an error that says it is not in the table. */
async function runOf(cloud: Deployed, runId: string): Promise<Run> {
  const run = await cloud.runs.getRun(runId);
  if (!run) throw new ConfigError(`No run ${runId} in table ${cloud.table}.`);
  return run;
}

/**
 * Where `start` uploads a local dataset: outside `inputs/<work>/`, which a stack with autoStart watches,
 * so that the upload starts no run of its own beside the execution `start` starts (two runs, one failing
 * as a duplicate, or, with allowSameDataset, the batches paid twice). One folder per run, so that a new
 * upload never replaces the object a running run reads.
 */
export const uploadKey = (work: string, runId: string, file: string) =>
  `uploads/${work}/${runId}/${basename(file)}`;

/** The console's host in each partition whose console is known here (aws-cn and aws-us-gov have their own). */
const CONSOLE_HOSTS: ReadonlyMap<string, (region: string) => string> = new Map([
  ['aws', (region: string) => `${region}.console.aws.amazon.com`],
  ['aws-cn', () => 'console.amazonaws.cn'],
  ['aws-us-gov', () => 'console.amazonaws-us-gov.com'],
]);

/**
 * The console page of an execution, on the console of its ARN's partition and in its ARN's region (the ARN
 * says where the execution is, whatever endpoint or region reached it); null for a partition not known.
 */
export function executionConsoleUrl(executionArn: string): string | null {
  const [, partition = '', , region] = executionArn.split(':');
  const host = CONSOLE_HOSTS.get(partition);
  return host && region
    ? `https://${host(region)}/states/home?region=${region}#/v2/executions/details/${executionArn}`
    : null;
}

/** `start`: uploads a local dataset when given a path, starts an execution, and says where to watch it. */
export async function startRun(
  work: string,
  dataset: string,
  options: CloudOptions & { runId?: string },
  print: (line: string) => void,
): Promise<string> {
  if (options.runId !== undefined) checkRunId(options.runId);
  const cloud = await deployed({ ...options, work }, true);
  if (!cloud.stateMachineArn) throw new ConfigError('No state machine: pass --state-machine-arn.');
  const runId =
    options.runId ??
    `${work}-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-')}`;
  let location = dataset;
  if (existsSync(dataset)) {
    const key = uploadKey(work, runId, dataset);
    const bytes = await cloud.blobs.write(key, createReadStream(dataset));
    location = `s3://${cloud.bucket}/${key}`;
    print(`uploaded ${dataset} (${bytes} bytes) to ${location}`);
  }
  const { executionArn } = await cloud.sfn.send(
    new StartExecutionCommand({
      stateMachineArn: cloud.stateMachineArn,
      name: runId,
      input: JSON.stringify({ dataset: location }),
    }),
  );
  print(`run ${runId} started`);
  print(`  execution: ${executionArn}`);
  const link = executionArn && executionConsoleUrl(executionArn);
  if (link) print(`  console:   ${link}`);
  print(`  watch it:  npx openai-batch status ${runId} --work ${work} --watch`);
  return runId;
}

/** A run's dataset, as it was given: its one object, or its prefix. */
function datasetOfRun(run: Run): string {
  return `s3://${run.bucket}/${run.dataset.key}`;
}

/**
 * `resume`: starts a new execution of the work's state machine that resumes a run that failed (its
 * Register revives it and takes its dataset again), or takes over one still running. A run that
 * completed or was cancelled is refused before anything starts.
 */
export async function resumeRun(
  runId: string,
  options: CloudOptions,
  print: (line: string) => void,
): Promise<string> {
  const cloud = await deployed(options, true);
  if (!cloud.stateMachineArn) throw new ConfigError('No state machine: pass --state-machine-arn.');
  const run = await runOf(cloud, runId);
  if (run.status === 'completed')
    throw new ConfigError(
      `Run ${runId} has completed: there is nothing to resume. Its results: npx openai-batch results ${runId}`,
    );
  if (run.status === 'cancelled')
    throw new ConfigError(
      `Run ${runId} was cancelled: a cancelled run is not resumed. Start a new run of its dataset (${datasetOfRun(run)}).`,
    );
  const name = executionName(runId, 'resume', Date.now());
  const { executionArn } = await cloud.sfn.send(
    new StartExecutionCommand({
      stateMachineArn: cloud.stateMachineArn,
      name,
      // The dataset is for people reading the input: Register resumes the run from its record.
      input: JSON.stringify({ resumeRunId: runId, dataset: datasetOfRun(run) }),
    }),
  );
  print(
    run.status === 'failed'
      ? `run ${runId} resumed (it had failed: ${run.error ?? 'no reason recorded'})`
      : `run ${runId} (${run.status}) taken over by a new execution; the old one ends at its next tick`,
  );
  print(`  execution: ${executionArn}`);
  const link = executionArn && executionConsoleUrl(executionArn);
  if (link) print(`  console:   ${link}`);
  print(`  watch it:  npx openai-batch status ${runId} --work ${options.work ?? run.work} --watch`);
  return name;
}

/** `results`: downloads a run's outputs, errors and summary into a folder. */
export async function downloadResults(
  runId: string,
  out: string,
  options: CloudOptions,
  print: (line: string) => void,
): Promise<void> {
  const cloud = await deployed(options, false);
  const run = await runOf(cloud, runId);
  const dir = resolve(out);
  mkdirSync(dir, { recursive: true });
  const outputs = await download(cloud.blobs, `runs/${runId}/outputs/`, join(dir, 'outputs.jsonl'));
  const errors = await download(cloud.blobs, `runs/${runId}/errors/`, join(dir, 'errors.jsonl'));
  const summary = (await cloud.blobs.head(`runs/${runId}/summary.json`))
    ? await download(cloud.blobs, `runs/${runId}/summary.json`, join(dir, 'summary.json'))
    : 0;
  if (!summary)
    writeFileSync(
      join(dir, 'summary.json'),
      `${JSON.stringify({ runId, status: run.status, note: 'the run has not finished: no summary yet' }, null, 2)}\n`,
    );
  print(`run ${runId} (${run.status}): ${outputs} outputs, ${errors} errors -> ${dir}`);
}

/** `cancel`: asks the run to stop. Its next tick cancels its batches, keeps what finished, and ends it cancelled. */
export async function cancelRun(
  runId: string,
  options: CloudOptions,
  print: (line: string) => void,
): Promise<void> {
  const cloud = await deployed(options, false);
  const run = await runOf(cloud, runId);
  if (['completed', 'failed', 'cancelled'].includes(run.status)) {
    print(`run ${runId} has already ended (${run.status}); nothing to cancel.`);
    return;
  }
  await updateRun(cloud.runs, runId, (r) => ({ ...r, cancelRequested: true }));
  const active = (await cloud.runs.listParts(runId)).filter(
    (p) => p.status === 'active' || p.status === 'submitting',
  ).length;
  print(
    `cancel requested for run ${runId}: at its next tick it cancels its ${active} batch(es) on OpenAI, keeps every finished result, puts the rest in errors, and ends cancelled.`,
  );
}

/** What a run waits for, in words, by why it is blocked. */
const BLOCKED_WORDS: Record<NonNullable<Run['blocked']>['reason'], string> = {
  openai_unavailable: 'OpenAI unavailable',
  key_refused: 'OpenAI refused the API key',
  quota_exhausted: "OpenAI refused for the account's quota or billing limit",
};

/** What a person can do about it (nothing, for an outage: the run goes on when OpenAI answers again). */
const BLOCKED_HINTS: Record<NonNullable<Run['blocked']>['reason'], string> = {
  openai_unavailable: 'the run goes on when OpenAI answers again',
  key_refused: 'put a working key in the secret; the run goes on by itself',
  quota_exhausted: 'raise the limit or add credit; the run goes on by itself',
};

/**
 * The line that says why a run waits for OpenAI, e.g. `waiting: OpenAI refused the API key since 12:03 UTC
 * (Incorrect API key provided ...); put a working key in the secret; ...`. `since` is how the caller tells
 * the time (a clock time for `status`, seconds into the run for `local`).
 */
export function blockedLine(
  blocked: { reason: NonNullable<Run['blocked']>['reason']; message: string },
  since: string,
): string {
  // The recorded message may open with the same words ("OpenAI refused the API key: ..."): said once.
  const detail = blocked.message.replace(/^OpenAI[^:]*:\s*/, '');
  const message = detail.length > 200 ? `${detail.slice(0, 197)}...` : detail;
  return `waiting: ${BLOCKED_WORDS[blocked.reason]} since ${since}${message ? ` (${message})` : ''}; ${BLOCKED_HINTS[blocked.reason]}`;
}

/** A time as `12:03 UTC`, with the date when it is not the day of `now`. */
function clockTime(ms: number, now: number): string {
  const at = new Date(ms).toISOString();
  const sameDay = at.slice(0, 10) === new Date(now).toISOString().slice(0, 10);
  return `${sameDay ? '' : `${at.slice(0, 10)} `}${at.slice(11, 16)} UTC`;
}

const BAR = 24;

/** A progress bar of `done` out of `total`. */
export function bar(done: number, total: number): string {
  const share = total > 0 ? Math.min(1, done / total) : 1;
  const filled = Math.round(share * BAR);
  return `[${'#'.repeat(filled)}${'-'.repeat(BAR - filled)}] ${String(Math.floor(share * 100)).padStart(3)}%`;
}

function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** How far a run's preparation is, from its lanes' checkpoints (the run record counts only once settled). */
export interface Preparation {
  readonly records: number;
  readonly shardsDone: number;
}

/** The shards a lane has finished, from its checkpoint: those of its shards before the one it is on. */
export function shardsDoneBy(checkpoint: LaneCheckpoint, lanes: number, shards: number): number {
  const before = checkpoint.done ? shards : checkpoint.shard;
  return before > checkpoint.lane ? Math.ceil((before - checkpoint.lane) / lanes) : 0;
}

/** Sums the lanes' checkpoints of a run that is preparing. */
export async function preparationOf(blobs: BlobStore, run: Run): Promise<Preparation> {
  let records = 0;
  let shardsDone = 0;
  for (let lane = 0; lane < run.dataset.lanes; lane++) {
    const checkpoint = await laneCheckpoint(blobs, run.runId, lane);
    if (!checkpoint) continue;
    records += checkpoint.counts.records;
    shardsDone += shardsDoneBy(checkpoint, run.dataset.lanes, run.dataset.shards);
  }
  return { records, shardsDone };
}

const SETTLE_WORDS = {
  dedup: 'looking for ids used more than once',
  drop: 'taking the later uses of an id out of their batch files',
  release: 'checking the cost and releasing the batch files',
} as const;

/** Batches `status` draws a bar for, at most. */
export const MAX_BATCH_LINES = 20;

/**
 * The lines `status` shows for one run: a bar per batch (at most {@link MAX_BATCH_LINES}, the rest
 * counted), and the whole run's with elapsed time and ETA.
 */
export function statusLines(
  run: Run,
  parts: readonly Part[],
  now: number,
  preparation: Preparation | null = null,
): string[] {
  const elapsed = now - run.createdAt;
  const lines = [
    `run ${run.runId} (${run.work}): ${run.status}${run.cancelRequested && run.status !== 'cancelled' ? ', cancelling' : ''}, ${duration(elapsed)} elapsed`,
  ];
  if (run.blocked && !['completed', 'failed', 'cancelled'].includes(run.status))
    lines.push(
      `  ${blockedLine(run.blocked, `${clockTime(run.blocked.since, now)}, ${duration(now - run.blocked.since)} ago`)}`,
    );
  if (!run.prepared) {
    const records = run.settle ? run.counts.records : (preparation?.records ?? run.counts.records);
    const shards = run.settle
      ? `all ${run.dataset.shards} shard(s)`
      : `${preparation?.shardsDone ?? 0} of ${run.dataset.shards} shard(s), ${run.dataset.lanes} at a time`;
    lines.push(
      `  preparing: ${records.toLocaleString('en-US')} records read (${shards}), ${parts.length} batch file(s) written`,
    );
    if (run.settle)
      lines.push(
        `  settling: ${SETTLE_WORDS[run.settle.stage]}${run.settle.stage === 'dedup' ? ` (partition ${run.settle.partition + 1} of ${run.dataset.partitions})` : ''}, ${run.settle.duplicates} found`,
      );
  }
  let done = 0;
  let total = 0;
  const finishedOf = (part: Part) => (part.status === 'done' ? part.requests : part.completed + part.failed);
  for (const part of parts) {
    done += finishedOf(part);
    total += part.requests;
  }
  // A bar per batch, for the first MAX_BATCH_LINES not done (then done ones), in part order; the rest
  // counted in one line, so that a run of thousands of batches still fits a screen.
  const sorted = [...parts].sort((a, b) => a.part - b.part);
  const shown =
    sorted.length <= MAX_BATCH_LINES
      ? sorted
      : [...sorted.filter((p) => p.status !== 'done'), ...sorted.filter((p) => p.status === 'done')]
          .slice(0, MAX_BATCH_LINES)
          .sort((a, b) => a.part - b.part);
  for (const part of shown) {
    const finished = finishedOf(part);
    const state = part.status === 'active' ? (part.batchStatus ?? 'active') : part.status;
    const failed = part.status === 'done' ? part.errors : part.failed;
    lines.push(
      `  batch ${String(part.part).padStart(5, '0')} ${bar(finished, part.requests)} ${finished}/${part.requests} done, ${failed} failed  ${state}`,
    );
  }
  if (shown.length < sorted.length) {
    const listed = new Set(shown);
    const byStatus = new Map<string, number>();
    for (const part of sorted)
      if (!listed.has(part)) byStatus.set(part.status, (byStatus.get(part.status) ?? 0) + 1);
    const counts = [...byStatus].map(([status, n]) => `${n.toLocaleString('en-US')} ${status}`).join(', ');
    lines.push(
      `  ... and ${(sorted.length - shown.length).toLocaleString('en-US')} more batches (${counts})`,
    );
  }
  const rate = elapsed > 0 ? done / elapsed : 0;
  const eta = done > 0 && done < total && rate > 0 ? `, ETA ${duration((total - done) / rate)}` : '';
  lines.push(`  all   ${bar(done, total)} ${done}/${total} requests${eta}`);
  if (['completed', 'cancelled'].includes(run.status)) {
    const counts = runCounts(run, parts);
    lines.push(
      `  ${counts.records} records -> ${counts.outputs} outputs, ${counts.errors} errors: npx openai-batch results ${run.runId}`,
    );
  }
  if (run.status === 'failed' && run.error) lines.push(`  ${run.error}`);
  return lines;
}

/**
 * `status`: the runs of a work, or one run's batches with progress bars. With `watch`, redraws in place
 * on a terminal (plain new lines when the output is not one) until the run ends.
 */
export async function showStatus(
  runId: string | undefined,
  options: CloudOptions & { watch?: boolean; intervalMs?: number },
  out: { write: (text: string) => void; isTTY: boolean },
): Promise<number> {
  const cloud = await deployed(options, false);
  if (!runId) {
    if (!options.work) throw new ConfigError('Name the work (--work NAME) to list its runs.');
    const runs = await cloud.runs.listRuns(options.work, 20);
    if (runs.length === 0) out.write(`no runs of ${options.work} yet\n`);
    for (const run of runs) {
      out.write(
        `${run.runId}  ${run.status.padEnd(10)} ${new Date(run.createdAt).toISOString()}  ${run.counts.records} records${run.blocked && !['completed', 'failed', 'cancelled'].includes(run.status) ? `  (waiting: ${BLOCKED_WORDS[run.blocked.reason]})` : ''}\n`,
      );
    }
    return 0;
  }
  let drawn = 0;
  let last = '';
  // A watcher started right after `start` may look before the run is registered: it waits a minute for it.
  const registeredBy = Date.now() + 60_000;
  for (;;) {
    if (options.watch && Date.now() < registeredBy && !(await cloud.runs.getRun(runId))) {
      if (drawn === 0 && last === '') out.write(`waiting for run ${runId} to start...\n`);
      last = 'waiting';
      await new Promise((r) => setTimeout(r, options.intervalMs ?? 5000));
      continue;
    }
    const run = await runOf(cloud, runId);
    const preparation = run.prepared || run.settle ? null : await preparationOf(cloud.blobs, run);
    const lines = statusLines(run, await cloud.runs.listParts(runId), Date.now(), preparation);
    const frame = lines.join('\n');
    if (out.isTTY) {
      // Move up over the last frame and clear it, then draw the new one.
      out.write(`${drawn > 0 ? `\x1b[${drawn}F\x1b[J` : ''}${frame}\n`);
      drawn = lines.length;
    } else if (frame !== last) {
      out.write(`${frame}\n`);
    }
    last = frame;
    const ended = ['completed', 'failed', 'cancelled'].includes(run.status);
    if (!options.watch || ended) return run.status === 'failed' ? 1 : 0;
    await new Promise((r) => setTimeout(r, options.intervalMs ?? 5000));
  }
}
