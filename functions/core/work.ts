import { z } from 'zod';
import { ConfigError } from './errors';
import { describeIssues } from './issues';
import { type BatchErrorItem, type BatchInputItemInput, ENDPOINTS, type Endpoint } from './items';
import { type StructuredOutput, type StructuredOutputItem, structuredOutputOf } from './structured';

/** OpenAI's hard limits for one batch input file. */
export const OPENAI_LIMITS = {
  requestsPerBatch: 50_000,
  bytesPerBatch: 200_000_000,
  embeddingInputsPerBatch: 50_000,
  metadataPairs: 16,
} as const;

const int = (field: string) => z.number({ error: `${field} must be a number` }).int('must be a whole number');

/**
 * The settings of a work (everything but its hooks). Every field but `name` has a default; unknown
 * fields are refused so that a typo is caught at synth time rather than ignored.
 */
export const WorkSettingsSchema = z
  .strictObject({
    /** Lower-case letters, digits and '-'; the stack is `OpenAIBatch-<name>`. */
    name: z
      .string({ error: 'is required: lower-case letters, digits and "-"' })
      .regex(
        /^[a-z][a-z0-9-]{0,47}$/,
        'must start with a letter, then up to 47 lower-case letters, digits or "-"',
      ),
    /** OpenAI's completion window; only '24h' exists. @default '24h' */
    completionWindow: z
      .literal('24h', { error: 'must be "24h", the only window OpenAI offers' })
      .default('24h'),
    /** The endpoint every request goes to. @default '/v1/chat/completions' */
    endpoint: z
      .enum(ENDPOINTS, { error: `must be one of ${ENDPOINTS.join(', ')}` })
      .default('/v1/chat/completions'),
    /** The model for requests whose item names none. */
    model: z.string().min(1, 'must not be empty').optional(),
    /** Let the same dataset content run twice for this work. @default false */
    allowSameDataset: z.boolean().default(false),
    /** Delete OpenAI files and intermediate request files when a run ends. @default true */
    cleanUp: z.boolean().default(true),
    /** Requests per batch file, at most OpenAI's 50,000. @default 50000 */
    maxRequestsPerBatch: int('maxRequestsPerBatch')
      .min(1, 'must be at least 1')
      .max(OPENAI_LIMITS.requestsPerBatch, "must be at most 50,000 (OpenAI's limit per batch file)")
      .default(OPENAI_LIMITS.requestsPerBatch),
    /** Bytes per batch file, at most OpenAI's 200 MB; the default leaves a 5% margin. @default 190000000 */
    maxBytesPerBatch: int('maxBytesPerBatch')
      .min(1024, 'must be at least 1024 bytes')
      .max(OPENAI_LIMITS.bytesPerBatch, "must be at most 200,000,000 bytes (OpenAI's 200 MB per batch file)")
      .default(190_000_000),
    /** Embedding inputs per batch file (an embeddings request may carry several). @default 50000 */
    maxEmbeddingInputsPerBatch: int('maxEmbeddingInputsPerBatch')
      .min(1, 'must be at least 1')
      .max(
        OPENAI_LIMITS.embeddingInputsPerBatch,
        "must be at most 50,000 (OpenAI's limit per embeddings batch)",
      )
      .default(OPENAI_LIMITS.embeddingInputsPerBatch),
    /** Batches in flight on OpenAI at once for one run. @default 20 */
    maxActiveBatches: int('maxActiveBatches')
      .min(1, 'must be at least 1')
      .max(500, 'must be at most 500')
      .default(20),
    /**
     * Estimated input tokens enqueued on OpenAI at once for one run; unset leaves it to OpenAI's
     * `token_limit_exceeded`, which throttles the run without failing it.
     */
    maxEnqueuedTokens: int('maxEnqueuedTokens').min(1, 'must be at least 1').optional(),
    /** Shortest wait between two polls of a run, in seconds. @default 30 */
    minPollSeconds: int('minPollSeconds')
      .min(1, 'must be at least 1 second')
      .max(86_400, 'must be at most 86400 seconds (a day)')
      .default(30),
    /** Longest wait between two polls of a run, in seconds. @default 900 */
    maxPollSeconds: int('maxPollSeconds')
      .min(1, 'must be at least 1 second')
      .max(86_400, 'must be at most 86400 seconds (a day)')
      .default(900),
    /**
     * Deploy a webhook endpoint that OpenAI calls when a batch ends, so that the run goes on within
     * seconds; polling stays on as the safety net and can be rare. @default false
     */
    webhooks: z.boolean({ error: 'must be true or false' }).default(false),
    /** How many times a request that expired or failed transiently is sent again. @default 2 */
    maxResubmits: int('maxResubmits').min(0, 'must be 0 or more').max(10, 'must be at most 10').default(2),
    /**
     * How many times a request whose structured answer could not be used (`invalid_output`, `refusal`,
     * `output_truncated`) is sent again, in a new part; at most `maxResubmits`. @default 0
     */
    maxOutputRetries: int('maxOutputRetries')
      .min(0, 'must be 0 or more')
      .max(10, 'must be at most 10')
      .default(0),
    /** The longest dataset line read; a longer line is an error record. @default 10485760 (10 MiB) */
    maxRecordBytes: int('maxRecordBytes')
      .min(16, 'must be at least 16 bytes')
      .max(OPENAI_LIMITS.bytesPerBatch, 'must be at most 200,000,000 bytes')
      .default(10 * 1024 * 1024),
    /** Output tokens a request is expected to use, for the cost estimate only. @default 200 */
    expectedOutputTokens: int('expectedOutputTokens').min(0, 'must be 0 or more').default(200),
    /**
     * Check each request body against its endpoint's request schema in OpenAI's spec (and the rules OpenAI
     * enforces beyond it) at prepare, so that a request OpenAI would refuse with a 400 goes to errors
     * before anything is paid or waited for. Turned off, such requests go to OpenAI and come back in its
     * error file. @default true
     */
    validateRequests: z.boolean({ error: 'must be true or false' }).default(true),
    /**
     * How many shards of the dataset are prepared at once (the Map state's concurrency, one Lambda each).
     * Raise it for datasets of tens of millions of records; each lane is one Lambda invocation at a time.
     * @default 4
     */
    prepareConcurrency: int('prepareConcurrency')
      .min(1, 'must be at least 1')
      .max(40, 'must be at most 40')
      .default(4),
    /**
     * The size of a shard in bytes: objects larger than this are split into byte ranges that start at line
     * boundaries, prepared in parallel. A gzip object is one shard. @default 67108864 (64 MiB)
     */
    shardBytes: int('shardBytes')
      .min(1024, 'must be at least 1024 bytes')
      .default(64 * 1024 * 1024),
    /** Refuse a run whose estimated cost in US dollars is higher, before anything is sent to OpenAI. */
    maxCostUsd: z.number({ error: 'must be a number of US dollars' }).positive('must be above 0').optional(),
  })
  .refine((s) => s.minPollSeconds <= s.maxPollSeconds, {
    path: ['minPollSeconds'],
    message: 'must not be above maxPollSeconds',
  })
  .refine((s) => s.maxOutputRetries <= s.maxResubmits, {
    path: ['maxOutputRetries'],
    message: 'must not be above maxResubmits (an output retry is a resubmit)',
  });

/** Settings as a user writes them (defaults optional). */
export type WorkSettingsInput = z.input<typeof WorkSettingsSchema>;
/** Settings with every default applied. */
export type WorkSettings = z.output<typeof WorkSettingsSchema>;

/** What the `upload` hook is told besides the record. */
export interface UploadContext {
  /** The 1-based dataset line of the record. */
  readonly line: number;
}

/** What `upload` may return: one request, several, or nothing to skip the record. */
export type UploadResult = BatchInputItemInput | readonly BatchInputItemInput[] | null | undefined;

/**
 * What `download` receives: with an `outputSchema`, the answer parsed and checked as `parsed`, typed from
 * the schema; without one, `parsed` is undefined.
 */
export type DownloadItem<O> = StructuredOutputItem<O>;

/** The hooks of a work: how records become requests and results become output records. */
export interface WorkHooks<R, O = unknown> {
  /** A dataset record to zero or more requests. Default: the record is itself a request item. */
  readonly upload: (record: R, context: UploadContext) => UploadResult | Promise<UploadResult>;
  /**
   * A successful result to the record written to outputs/; null or undefined writes nothing. (Method
   * syntax, so that a work typed by its outputSchema still passes where any work is taken.)
   */
  download(item: DownloadItem<O>): unknown;
  /** A failed record or request to the record written to errors/. */
  readonly downloadError: (item: BatchErrorItem) => unknown;
}

/** A work as a user writes it: settings plus optional hooks, and optionally a schema for records. */
export type WorkConfig<R = Record<string, unknown>, O = unknown> = WorkSettingsInput &
  Partial<WorkHooks<R, O>> & {
    /** A zod schema each dataset record must match; a record that fails is an error naming the field. */
    readonly record?: z.ZodType<R>;
    /**
     * A zod schema for the answer (chat and responses only): requests ask for it as a strict structured
     * output, and `download` receives the answer parsed and checked as `item.parsed`.
     */
    readonly outputSchema?: z.ZodType<O>;
  };

/** A validated work: settings with defaults, hooks with defaults. */
export interface Work<R = Record<string, unknown>, O = unknown> extends WorkHooks<R, O> {
  readonly settings: WorkSettings;
  readonly record: z.ZodType<R> | undefined;
  /** The answer schema and the request format built from it; undefined without `outputSchema`. */
  readonly structured: StructuredOutput | undefined;
}

const HOOKS = ['upload', 'download', 'downloadError'] as const;

/**
 * Checks a work's configuration and fills in defaults. Throws a {@link ConfigError} that names each
 * field, its value and the rule it breaks.
 */
export function defineWork<R = Record<string, unknown>, O = unknown>(config: WorkConfig<R, O>): Work<R, O> {
  if (config === null || typeof config !== 'object') {
    throw new ConfigError('A work must be an object passed to defineWork({...}).');
  }
  const { upload, download, downloadError, record, outputSchema, ...settings } = config;
  const problems: string[] = [];
  const hooks: Record<string, unknown> = { upload, download, downloadError };
  for (const hook of HOOKS) {
    if (hooks[hook] !== undefined && typeof hooks[hook] !== 'function') {
      problems.push(`${hook}: must be a function (got ${typeof hooks[hook]})`);
    }
  }
  if (record !== undefined && (record === null || typeof record !== 'object' || !('safeParse' in record))) {
    problems.push('record: must be a zod schema');
  }
  const parsed = WorkSettingsSchema.safeParse(settings);
  if (!parsed.success) problems.push(...describeIssues(parsed.error, settings));
  const structured =
    outputSchema === undefined
      ? undefined
      : structuredOutputOf(
          outputSchema,
          parsed.success ? parsed.data.endpoint : (settings.endpoint ?? '/v1/chat/completions'),
        );
  if (structured && 'problem' in structured) problems.push(structured.problem);
  if (!parsed.success || problems.length > 0) {
    const name = typeof settings.name === 'string' ? ` "${settings.name}"` : '';
    throw new ConfigError(`Invalid work${name}:\n  - ${problems.join('\n  - ')}`, problems);
  }
  return {
    settings: parsed.data,
    record,
    structured: structured && 'output' in structured ? structured.output : undefined,
    upload: upload ?? ((item: R) => item as unknown as BatchInputItemInput),
    download: download ?? ((item) => item),
    downloadError: downloadError ?? ((item) => item),
  };
}

/** True for the endpoint whose requests carry embedding inputs, counted against their own limit. */
export function isEmbeddings(endpoint: Endpoint): boolean {
  return endpoint === '/v1/embeddings';
}
