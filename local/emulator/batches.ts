import { linesOf } from '../../functions/core/lines';
import { checkRequestBody } from '../../functions/core/request-bodies';
import { ApiError, notFound } from './api-error';
import { type Clock, unixSeconds } from './clock';
import type { FileStore } from './files';
import { MEDIA_ENDPOINTS } from './images';
import { hash32, type Ids } from './random';
import { type AnswerOptions, answer } from './responses';
import { type BatchErrorEntry, type InputLimits, validateInput } from './validation';

/** Endpoints a batch may target. */
export const BATCH_ENDPOINTS = [
  '/v1/responses',
  '/v1/chat/completions',
  '/v1/embeddings',
  '/v1/completions',
  '/v1/moderations',
  ...MEDIA_ENDPOINTS,
] as const;

/** A batch's status, as OpenAI names them. */
export type BatchStatus =
  | 'validating'
  | 'failed'
  | 'in_progress'
  | 'finalizing'
  | 'completed'
  | 'expired'
  | 'cancelling'
  | 'cancelled';

const TERMINAL: ReadonlySet<BatchStatus> = new Set(['failed', 'completed', 'expired', 'cancelled']);

/** Token usage on a batch. */
export interface BatchUsage {
  input_tokens: number;
  input_tokens_details: { cached_tokens: number };
  output_tokens: number;
  output_tokens_details: { reasoning_tokens: number };
  total_tokens: number;
}

/** The Batch object, every field the real API sends, nulls included. */
export interface BatchObject {
  id: string;
  object: 'batch';
  endpoint: string;
  model: string | null;
  errors: { object: 'list'; data: BatchErrorEntry[] } | null;
  input_file_id: string;
  completion_window: string;
  status: BatchStatus;
  output_file_id: string | null;
  error_file_id: string | null;
  created_at: number;
  in_progress_at: number | null;
  expires_at: number;
  finalizing_at: number | null;
  completed_at: number | null;
  failed_at: number | null;
  expired_at: number | null;
  cancelling_at: number | null;
  cancelled_at: number | null;
  request_counts: { total: number; completed: number; failed: number };
  usage: BatchUsage;
  metadata: Record<string, string> | null;
}

/** What the emulator keeps about a batch beyond the object itself. */
interface BatchState {
  batch: BatchObject;
  /** When validation ends (ms). */
  validateAt: number;
  /** When processing started (ms), once in progress. */
  startedAt: number | null;
  /** When finalizing or cancelling ends (ms). */
  settleAt: number | null;
  /** Requests processed when the batch stopped being processed (cancel). */
  processedAtStop: number | null;
  inputTokens: number;
  /** Per request, by input order: 0 succeeds, 1 fails with 400, 2 with 500 (base64 when persisted). */
  outcomes: Uint8Array;
  outputExpiresAfter: number | null;
  /** Output files written by a finished finalize job, waiting for `settleAt`. */
  ready: { output: string | null; error: string | null; usage: BatchUsage } | null;
  /** A job (validation or writing results) is running. */
  busy: boolean;
}

/** How fast batches move, and the limits they are held to. */
export interface EngineOptions {
  /** Time a batch spends validating. @default 1000 */
  readonly validationMs: number;
  /** Requests processed a second once in progress. @default 1000 */
  readonly requestsPerSecond: number;
  /** Time a batch spends finalizing. @default 200 */
  readonly finalizingMs: number;
  /** Time a batch spends cancelling. @default 1000 */
  readonly cancellingMs: number;
  /** The completion window. @default 24 h */
  readonly completionWindowMs: number;
  /** Estimated prompt tokens a model may have in progress at once; unset is unlimited. */
  readonly enqueuedTokenLimit?: number | undefined;
  readonly limits: InputLimits;
  readonly answers: AnswerOptions;
}

/** What a batch create request carries, after the server checked its shape. */
export interface CreateBatch {
  input_file_id: string;
  endpoint: string;
  completion_window: string;
  metadata: Record<string, string> | null;
  outputExpiresAfter: number | null;
}

const EXPIRED_MESSAGE = 'This request could not be executed before the completion window expired.';
const CANCELLED_MESSAGE = 'This request was not executed because the batch was cancelled.';
const SHUFFLE_BLOCK = 64;

function emptyUsage(): BatchUsage {
  return {
    input_tokens: 0,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: 0,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: 0,
  };
}

/**
 * The batch lifecycle: validating -> in_progress -> finalizing -> completed; validating -> failed;
 * -> expired when the window passes (partial output, `batch_expired` errors for the rest); cancelling ->
 * cancelled (partial output kept). Time comes from the clock, so tests can pass a day in milliseconds;
 * `tick` moves every batch as far as the clock allows, `settle` also waits for the file-writing jobs.
 */
export class BatchEngine {
  private readonly states = new Map<string, BatchState>();
  private readonly jobs = new Set<Promise<void>>();
  /** How many batches were created; faults and crash tests count on it. */
  created = 0;

  constructor(
    private readonly files: FileStore,
    private readonly clock: Clock,
    private readonly ids: Ids,
    private readonly options: EngineOptions,
    private readonly onChange: (batch: BatchObject, terminal: boolean) => void,
  ) {}

  /** Creates a batch in `validating`. A missing input file is not refused here, as with OpenAI. */
  create(request: CreateBatch): BatchObject {
    const now = this.clock.now();
    const created = unixSeconds(now);
    const batch: BatchObject = {
      id: this.ids.batch(),
      object: 'batch',
      endpoint: request.endpoint,
      model: null,
      errors: null,
      input_file_id: request.input_file_id,
      completion_window: request.completion_window,
      status: 'validating',
      output_file_id: null,
      error_file_id: null,
      created_at: created,
      in_progress_at: null,
      expires_at: unixSeconds(now + this.options.completionWindowMs),
      finalizing_at: null,
      completed_at: null,
      failed_at: null,
      expired_at: null,
      cancelling_at: null,
      cancelled_at: null,
      request_counts: { total: 0, completed: 0, failed: 0 },
      usage: emptyUsage(),
      metadata: request.metadata,
    };
    this.states.set(batch.id, {
      batch,
      validateAt: now + this.options.validationMs,
      startedAt: null,
      settleAt: null,
      processedAtStop: null,
      inputTokens: 0,
      outcomes: new Uint8Array(0),
      outputExpiresAfter: request.outputExpiresAfter,
      ready: null,
      busy: false,
    });
    this.created += 1;
    this.onChange(batch, false);
    return batch;
  }

  /** A batch by id. */
  get(id: string): BatchObject {
    const state = this.states.get(id);
    if (!state) throw notFound('batch', id);
    return state.batch;
  }

  /** Batches newest first, from after the `after` id, at most `limit`. */
  list(after: string | undefined, limit: number): { data: BatchObject[]; hasMore: boolean } {
    const all = [...this.states.values()].map((s) => s.batch).reverse();
    let start = 0;
    if (after) {
      const index = all.findIndex((b) => b.id === after);
      start = index === -1 ? all.length : index + 1;
    }
    return { data: all.slice(start, start + limit), hasMore: start + limit < all.length };
  }

  /** Starts cancelling; a finished batch cannot be cancelled (409), a cancelled one can again. */
  cancel(id: string): BatchObject {
    const state = this.states.get(id);
    if (!state) throw notFound('batch', id);
    const { batch } = state;
    if (batch.status === 'cancelling' || batch.status === 'cancelled') return batch;
    if (TERMINAL.has(batch.status)) {
      throw new ApiError(
        409,
        `Cannot cancel a batch with status '${batch.status}'.`,
        'invalid_request_error',
      );
    }
    const now = this.clock.now();
    this.refreshCounts(state, now);
    state.processedAtStop = batch.request_counts.completed + batch.request_counts.failed;
    batch.status = 'cancelling';
    batch.cancelling_at = unixSeconds(now);
    state.settleAt = now + this.options.cancellingMs;
    this.onChange(batch, false);
    return batch;
  }

  /** Moves every batch as far as the clock allows, starting jobs that run in the background. */
  tick(): void {
    const now = this.clock.now();
    for (const state of this.states.values()) this.advance(state, now);
  }

  /** Ticks and waits for jobs until nothing moves: for tests with a manual clock. */
  async settle(): Promise<void> {
    for (let round = 0; round < 100; round++) {
      this.tick();
      if (this.jobs.size === 0) return;
      await Promise.all([...this.jobs]);
    }
  }

  /** Waits for the running jobs. */
  async idle(): Promise<void> {
    while (this.jobs.size > 0) await Promise.all([...this.jobs]);
  }

  private advance(state: BatchState, now: number): void {
    const { batch } = state;
    if (state.busy || TERMINAL.has(batch.status)) return;
    const expiresAt = batch.expires_at * 1000;
    switch (batch.status) {
      case 'validating':
        if (now >= expiresAt) this.job(state, () => this.writeResults(state, 0, 'expired'));
        else if (now >= state.validateAt) this.job(state, () => this.validate(state));
        return;
      case 'in_progress': {
        const processed = this.refreshCounts(state, now);
        if (processed >= batch.request_counts.total) {
          batch.status = 'finalizing';
          batch.finalizing_at = unixSeconds(now);
          state.settleAt = now + this.options.finalizingMs;
          this.onChange(batch, false);
          this.job(state, () => this.writeResults(state, processed, 'completed'));
        } else if (now >= expiresAt) {
          this.job(state, () => this.writeResults(state, processed, 'expired'));
        }
        return;
      }
      case 'finalizing':
        if (state.ready && state.settleAt !== null && now >= state.settleAt) {
          this.finish(state, 'completed', state.ready);
        }
        return;
      case 'cancelling':
        if (state.settleAt !== null && now >= state.settleAt) {
          this.job(state, () => this.writeResults(state, state.processedAtStop ?? 0, 'cancelled'));
        }
        return;
    }
  }

  private job(state: BatchState, work: () => Promise<void>): void {
    state.busy = true;
    const running: Promise<void> = work()
      .catch((caught: unknown) => {
        // A job that cannot read its own files is the emulator's bug; fail the batch rather than hang.
        const message = caught instanceof Error ? caught.message : String(caught);
        this.fail(state, [
          { code: 'server_error', message: `Emulator error: ${message}`, param: null, line: null },
        ]);
      })
      .finally(() => {
        state.busy = false;
        this.jobs.delete(running);
      });
    this.jobs.add(running);
  }

  /** Requests processed so far by the clock; updates `request_counts`. */
  private refreshCounts(state: BatchState, now: number): number {
    const { batch } = state;
    if (batch.status !== 'in_progress' || state.startedAt === null) {
      return batch.request_counts.completed + batch.request_counts.failed;
    }
    const total = batch.request_counts.total;
    // Nothing is processed after the window closes, however far the clock jumped past it.
    const until = Math.min(now, batch.expires_at * 1000);
    const processed = Math.min(
      total,
      Math.floor(((until - state.startedAt) * this.options.requestsPerSecond) / 1000),
    );
    let failed = batch.request_counts.failed;
    for (let i = batch.request_counts.completed + batch.request_counts.failed; i < processed; i++) {
      if (state.outcomes[i] !== 0) failed += 1;
    }
    batch.request_counts.failed = failed;
    batch.request_counts.completed = processed - failed;
    return processed;
  }

  private async validate(state: BatchState): Promise<void> {
    const { batch } = state;
    const fileId = batch.input_file_id;
    if (!this.files.has(fileId) || this.files.get(fileId).purpose !== 'batch') {
      const message = this.files.has(fileId)
        ? `File '${fileId}' has purpose '${this.files.get(fileId).purpose}'; a batch input file must have purpose 'batch'.`
        : `Cannot find file ${fileId}, or organization org-emulator does not have access to it.`;
      this.fail(state, [{ code: 'invalid_request', message, param: 'file_id', line: null }]);
      return;
    }
    const result = await validateInput(this.files.read(fileId), batch.endpoint, this.options.limits);
    if (batch.status !== 'validating') return; // cancelled meanwhile
    batch.model = result.model;
    if (result.errors.length > 0) {
      this.fail(state, result.errors);
      return;
    }
    const limit = this.options.enqueuedTokenLimit;
    if (limit !== undefined) {
      let enqueued = result.inputTokens;
      for (const other of this.states.values()) {
        const active = other.batch.status === 'in_progress' || other.batch.status === 'finalizing';
        if (other !== state && active && other.batch.model === result.model) enqueued += other.inputTokens;
      }
      if (enqueued > limit) {
        const message = `Enqueued token limit reached for ${result.model} in organization org-emulator. Limit: ${limit.toLocaleString('en-US')} enqueued tokens. Please try again once some in_progress batches have been completed.`;
        this.fail(state, [{ code: 'token_limit_exceeded', message, param: null, line: null }]);
        return;
      }
    }
    const now = this.clock.now();
    state.inputTokens = result.inputTokens;
    state.outcomes = result.outcomes;
    state.startedAt = now;
    batch.request_counts.total = result.total;
    batch.status = 'in_progress';
    batch.in_progress_at = unixSeconds(now);
    this.onChange(batch, false);
  }

  private fail(state: BatchState, errors: BatchErrorEntry[]): void {
    const { batch } = state;
    batch.status = 'failed';
    batch.failed_at = unixSeconds(this.clock.now());
    batch.errors = { object: 'list', data: errors };
    this.onChange(batch, true);
  }

  private finish(
    state: BatchState,
    status: 'completed' | 'expired' | 'cancelled',
    files: { output: string | null; error: string | null; usage: BatchUsage },
  ): void {
    const { batch } = state;
    const at = unixSeconds(this.clock.now());
    batch.status = status;
    batch.output_file_id = files.output;
    batch.error_file_id = files.error;
    batch.usage = files.usage;
    if (status === 'completed') batch.completed_at = at;
    if (status === 'expired') batch.expired_at = at;
    if (status === 'cancelled') batch.cancelled_at = at;
    this.onChange(batch, true);
  }

  /**
   * Writes the output file (successes among the first `processed` requests) and the error file (their
   * failures, and every request after them as expired or cancelled), in shuffled blocks as OpenAI's
   * order differs from the input's. Two streaming passes over the input file; nothing is held.
   */
  private async writeResults(
    state: BatchState,
    processed: number,
    status: 'completed' | 'expired' | 'cancelled',
  ): Promise<void> {
    const { batch } = state;
    const usage = emptyUsage();
    const created = unixSeconds(this.clock.now());
    const answers = this.options.answers;
    const leftover =
      status === 'cancelled' ? ['batch_cancelled', CANCELLED_MESSAGE] : ['batch_expired', EXPIRED_MESSAGE];
    const fileId = batch.input_file_id;
    const hasInput = this.files.has(fileId);

    let requests = 0;
    const lines = async function* (this: BatchEngine, wantErrors: boolean): AsyncGenerator<string> {
      if (!hasInput) return;
      let index = 0;
      let block: string[] = [];
      const flush = (): string[] => {
        const out = shuffle(block, hash32(answers.seed, batch.id, index));
        block = [];
        return out;
      };
      for await (const raw of linesOf(this.files.read(fileId), 256 * 1024 * 1024)) {
        if (raw.bytes === null || raw.bytes.length === 0) continue;
        const request = JSON.parse(Buffer.from(raw.bytes).toString('utf8')) as {
          custom_id: string;
          body: Record<string, unknown>;
        };
        const i = index++;
        const outcome = state.outcomes[i] ?? 0;
        const base = { id: this.ids.batchRequest(), custom_id: request.custom_id };
        let line: string | null = null;
        if (i >= processed) {
          if (wantErrors)
            line = JSON.stringify({
              ...base,
              response: null,
              error: { code: leftover[0], message: leftover[1] },
            });
        } else if (outcome === 0) {
          if (!wantErrors) {
            const result = answer(batch.endpoint, request.custom_id, request.body, created, answers);
            usage.input_tokens += result.inputTokens;
            usage.output_tokens += result.outputTokens;
            usage.total_tokens += result.inputTokens + result.outputTokens;
            line = JSON.stringify({
              ...base,
              response: { status_code: 200, request_id: this.ids.request(), body: result.body },
              error: null,
            });
          }
        } else if (wantErrors) {
          const problem = outcome === 1 ? checkRequestBody(batch.endpoint, request.body) : undefined;
          const [statusCode, type, code, message, param] = problem
            ? [400, 'invalid_request_error', problem.code, problem.message, problem.param]
            : outcome === 2
              ? [
                  500,
                  'server_error',
                  'server_error',
                  'The server had an error while processing your request.',
                  null,
                ]
              : [
                  400,
                  'invalid_request_error',
                  'emulated_failure',
                  'Emulated failure requested by the request content.',
                  null,
                ];
          line = JSON.stringify({
            ...base,
            response: {
              status_code: statusCode,
              request_id: this.ids.request(),
              body: { error: { message, type, param, code } },
            },
            error: null,
          });
        }
        if (line !== null) block.push(`${line}\n`);
        if (block.length >= SHUFFLE_BLOCK) yield* flush();
      }
      yield* flush();
      requests = index;
    }.bind(this);

    const expiresAfter = state.outputExpiresAfter ?? undefined;
    const output = await this.files.write(lines(false), {
      filename: `${batch.id}_output.jsonl`,
      purpose: 'batch_output',
      expiresAfterSeconds: expiresAfter,
    });
    const error = await this.files.write(lines(true), {
      filename: `${batch.id}_error.jsonl`,
      purpose: 'batch_output',
      expiresAfterSeconds: expiresAfter,
    });
    const files = {
      output: output.bytes > 0 ? output.id : null,
      error: error.bytes > 0 ? error.id : null,
      usage,
    };
    for (const file of [output, error]) if (file.bytes === 0) await this.files.delete(file.id);
    if (status === 'completed') {
      state.ready = files; // completed on the first tick once finalizing time has passed
      return;
    }
    // A batch stopped before validation ended counted nothing yet; its error file holds every request.
    if (batch.request_counts.total === 0) batch.request_counts.total = requests;
    // Every request not completed by now failed: its own failure, or the window or cancel cut it short.
    batch.request_counts.failed = batch.request_counts.total - batch.request_counts.completed;
    this.finish(state, status, files);
  }

  /** The engine's state, to persist. */
  snapshot(): unknown[] {
    return [...this.states.values()].map((s) => ({
      ...s,
      busy: false,
      outcomes: Buffer.from(s.outcomes).toString('base64'),
    }));
  }

  /** Restores a snapshot; interrupted jobs run again on the next tick. */
  restore(saved: unknown[]): void {
    for (const entry of saved as (Omit<BatchState, 'outcomes'> & { outcomes: string })[]) {
      this.states.set(entry.batch.id, {
        ...entry,
        busy: false,
        outcomes: Uint8Array.from(Buffer.from(entry.outcomes, 'base64')),
      });
    }
  }
}

/** A deterministic shuffle (Fisher-Yates driven by the seed). */
function shuffle<T>(values: T[], seed: number): T[] {
  let state = seed >>> 0;
  for (let i = values.length - 1; i > 0; i--) {
    state = Math.imul(state ^ (state >>> 15), 0x2c1b3c6d) + 0x6d2b79f5;
    const j = (state >>> 0) % (i + 1);
    const a = values[i] as T;
    values[i] = values[j] as T;
    values[j] = a;
  }
  return values;
}
