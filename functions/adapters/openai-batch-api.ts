import OpenAI, { toStreamingFile } from 'openai';
import { z } from 'zod';
import {
  blockedMessage,
  ConfigError,
  messageOf,
  OpenAIUnavailableError,
  openaiBlockReason,
} from '../core/errors';
import type { BatchApi, CreateBatchInput } from '../core/ports';
import type { BatchView } from '../core/reconciler';

/**
 * What a batch answer must hold to be one: a proxy or a captive portal that answers 200 with a page, or
 * with JSON of its own, gives a string or an object without them. The rest is read leniently (nulls and
 * missing fields have defaults below).
 */
const count = z.number().int().nonnegative();
const fileId = z.string().nullish();
const BatchAnswerSchema = z.looseObject({
  id: z.string().min(1),
  status: z.string().min(1),
  created_at: z.number(),
  // What the part keeps of it, which its record's schema checks again when it is stored.
  request_counts: z.looseObject({ total: count, completed: count, failed: count }).nullish(),
  output_file_id: fileId,
  error_file_id: fileId,
  errors: z
    .looseObject({
      data: z
        .array(
          z.looseObject({
            code: z.string().nullish(),
            message: z.string().nullish(),
            line: z.number().int().nullish(),
          }),
        )
        .nullish(),
    })
    .nullish(),
  metadata: z.record(z.string(), z.string()).nullish(),
});

/** What a file answer must hold to be one (see BatchAnswerSchema). */
const FileAnswerSchema = z.looseObject({ id: z.string().min(1), filename: z.string() });

/** An answer that is not OpenAI's: the run waits, as for an outage, and reads it again later. */
function notOpenAIs(what: string, answer: unknown): OpenAIUnavailableError {
  const shown =
    typeof answer === 'string' ? `text (${answer.slice(0, 80)})` : JSON.stringify(answer)?.slice(0, 120);
  return new OpenAIUnavailableError(
    blockedMessage('openai_unavailable', `an answer that is not ${what}: ${shown ?? String(answer)}`),
    'openai_unavailable',
  );
}

/** What a list answer must hold to be one (see BatchAnswerSchema). */
const ListAnswerSchema = z.looseObject({ data: z.array(z.unknown()) });

/** A page of a list, as the client gives it. */
interface ListPage<T> {
  readonly data: T[];
  hasNextPage(): boolean;
  getNextPage(): Promise<ListPage<T>>;
}

/**
 * The pages of a list, each checked to be a list: the client takes any 200 for a page (an HTML page or
 * another JSON for an empty list, where a lost create's lookup would then find nothing and send its part
 * again), and fails on a null or empty body with a TypeError of its own.
 */
async function* listPages<T>(what: string, first: () => Promise<ListPage<T>>): AsyncGenerator<T[]> {
  const checked = async (next: () => Promise<ListPage<T>>) => {
    let page: ListPage<T>;
    try {
      page = await next();
    } catch (caught) {
      if (caught instanceof TypeError) throw notOpenAIs(`a list of ${what}`, messageOf(caught));
      throw caught;
    }
    // The answer as it came (the client's page keeps it, protected): `data` alone is [] for any 200.
    const body: unknown = Reflect.get(page, 'body');
    if (!ListAnswerSchema.safeParse(body).success) throw notOpenAIs(`a list of ${what}`, body);
    return page;
  };
  let page = await checked(first);
  yield page.data;
  while (page.hasNextPage()) {
    const current = page;
    page = await checked(() => current.getNextPage());
    yield page.data;
  }
}

/** The reconciler's view of an OpenAI batch; an answer that is not a batch is an outage (see notOpenAIs). */
export function viewOf(answer: OpenAI.Batch): BatchView {
  if (!BatchAnswerSchema.safeParse(answer).success) throw notOpenAIs('a batch', answer);
  const batch = answer;
  return {
    id: batch.id,
    status: batch.status,
    total: batch.request_counts?.total ?? 0,
    completed: batch.request_counts?.completed ?? 0,
    failed: batch.request_counts?.failed ?? 0,
    outputFileId: batch.output_file_id ?? null,
    errorFileId: batch.error_file_id ?? null,
    errors: (batch.errors?.data ?? []).map((e) => ({
      code: e.code ?? 'unknown',
      message: e.message ?? '',
      line: e.line ?? null,
    })),
    metadata: (batch.metadata ?? {}) as Record<string, string>,
    createdAt: batch.created_at,
  };
}

/**
 * How long one call may wait for OpenAI's answer (ms). A create that has not answered by then is looked
 * for by its metadata (the lost-create grace, 2 minutes, is longer), and every call ends well inside the
 * Tick function's 6 minutes; an upload of up to 200 MB gets longer.
 */
export const OPENAI_TIMEOUTS = {
  call: 45_000,
  upload: 180_000,
  /** A download that sends nothing for this long is dropped (the next pass reads the file again). */
  idle: 60_000,
} as const;

/**
 * Retries of a call by the client, on 429, 5xx and dropped connections: one, so that a call ends within
 * about two timeouts; the next pass is the retry after that.
 */
const RETRIES = 1;

/**
 * The error to throw for an error of the official client: an outage, a refused key or an exhausted quota
 * becomes an {@link OpenAIUnavailableError} (the run waits), anything else stays as it is (the request's).
 */
export function asBatchApiError(caught: unknown): unknown {
  const reason = openaiBlockReason(caught);
  if (reason === null || caught instanceof OpenAIUnavailableError) return caught;
  const status = (caught as { status?: unknown }).status;
  return new OpenAIUnavailableError(
    blockedMessage(reason, messageOf(caught)),
    reason,
    typeof status === 'number' ? status : undefined,
  );
}

/**
 * A batch or file of the run that OpenAI says does not exist: this project made it, and OpenAI does not
 * lose batches, so the key is not the project's that made it (a key of another project put in the
 * secret). The run waits for the right key rather than failing its parts.
 */
function unknownToKey(what: string, caught: unknown): OpenAIUnavailableError {
  return new OpenAIUnavailableError(
    blockedMessage(
      'key_refused',
      `OpenAI does not know ${what} for this key (a key of another project?): ${messageOf(caught)}`,
    ),
    'key_refused',
    404,
  );
}

async function guarded<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (caught) {
    // A 200 whose body is not JSON (cut short, empty): the client's parse fails. Not OpenAI's answer.
    if (caught instanceof SyntaxError) throw notOpenAIs('JSON', messageOf(caught));
    throw asBatchApiError(caught);
  }
}

/** A {@link BatchApi} on the official client (OpenAI, the emulator, or any compatible base URL). */
export class OpenAIBatchApi implements BatchApi {
  constructor(private readonly client: OpenAI) {}

  async uploadFile(filename: string, body: AsyncIterable<Uint8Array>): Promise<string> {
    // The body is read while it is sent: a failure to read it (the request file gone from S3, a key it
    // cannot decrypt) reaches the client as a dropped connection, which would be taken for an outage and
    // waited on for ever. It is thrown as itself, naming the file.
    let unread: { error: unknown } | null = null;
    async function* watched(): AsyncGenerator<Uint8Array> {
      try {
        yield* body;
      } catch (caught) {
        unread = { error: caught };
        throw caught;
      }
    }
    try {
      return await this.sendFile(filename, watched());
    } catch (caught) {
      const failure = unread as { error: unknown } | null;
      if (failure) throw failure.error;
      throw caught;
    }
  }

  private sendFile(filename: string, body: AsyncIterable<Uint8Array>): Promise<string> {
    return guarded(async () => {
      const file = await this.client.files.create(
        { file: toStreamingFile(body, filename), purpose: 'batch' },
        { timeout: OPENAI_TIMEOUTS.upload },
      );
      if (!FileAnswerSchema.safeParse(file).success) throw notOpenAIs('a file', file);
      return file.id;
    });
  }

  createBatch(input: CreateBatchInput): Promise<BatchView> {
    // Never retried by the client: an answer lost after OpenAI acted would create the batch twice.
    return guarded(async () =>
      viewOf(
        await this.client.batches.create(
          {
            input_file_id: input.fileId,
            endpoint: input.endpoint as OpenAI.BatchCreateParams['endpoint'],
            completion_window: '24h',
            metadata: input.metadata,
          },
          { maxRetries: 0, timeout: OPENAI_TIMEOUTS.call },
        ),
      ),
    );
  }

  getBatch(batchId: string): Promise<BatchView> {
    return guarded(async () => {
      try {
        return viewOf(
          await this.client.batches.retrieve(batchId, { timeout: OPENAI_TIMEOUTS.call, maxRetries: RETRIES }),
        );
      } catch (caught) {
        if (caught instanceof OpenAI.NotFoundError) throw unknownToKey(`batch ${batchId}`, caught);
        throw caught;
      }
    });
  }

  recentBatches(since: number): Promise<BatchView[]> {
    return guarded(async () => {
      const found: BatchView[] = [];
      const pages = listPages(
        'batches',
        async () =>
          await this.client.batches.list(
            { limit: 100 },
            { timeout: OPENAI_TIMEOUTS.call, maxRetries: RETRIES },
          ),
      );
      for await (const batches of pages) {
        for (const batch of batches) {
          if (batch.created_at < since) return found; // newest first: the rest are older
          found.push(viewOf(batch));
        }
      }
      return found;
    });
  }

  cancelBatch(batchId: string): Promise<BatchView> {
    return guarded(async () => {
      try {
        return viewOf(
          await this.client.batches.cancel(batchId, { maxRetries: 0, timeout: OPENAI_TIMEOUTS.call }),
        );
      } catch (caught) {
        if (caught instanceof OpenAI.ConflictError) return this.getBatch(batchId); // already finished
        if (caught instanceof OpenAI.NotFoundError) throw unknownToKey(`batch ${batchId}`, caught);
        throw caught;
      }
    });
  }

  async *fileContent(fileId: string): AsyncGenerator<Uint8Array> {
    // The client's timeout ends at the answer's headers: a body that stalls is dropped by this signal.
    const stall = new AbortController();
    let timer = setTimeout(() => stall.abort(), OPENAI_TIMEOUTS.idle);
    try {
      const response = await this.client.files.content(fileId, {
        timeout: OPENAI_TIMEOUTS.call,
        maxRetries: RETRIES,
        signal: stall.signal,
      });
      if (!response.body) return;
      for await (const chunk of response.body) {
        clearTimeout(timer);
        yield chunk as Uint8Array;
        timer = setTimeout(() => stall.abort(), OPENAI_TIMEOUTS.idle);
      }
    } catch (caught) {
      if (stall.signal.aborted)
        throw new OpenAIUnavailableError(
          blockedMessage('openai_unavailable', `the download of file ${fileId} stalled`),
          'openai_unavailable',
        );
      if (caught instanceof OpenAI.NotFoundError) throw unknownToKey(`file ${fileId}`, caught);
      throw asBatchApiError(caught);
    } finally {
      clearTimeout(timer);
    }
  }

  deleteFile(fileId: string): Promise<void> {
    return guarded(async () => {
      try {
        await this.client.files.delete(fileId, { timeout: OPENAI_TIMEOUTS.call, maxRetries: RETRIES });
      } catch (caught) {
        if (!(caught instanceof OpenAI.NotFoundError)) throw caught;
      }
    });
  }

  filesNamed(prefix: string): Promise<string[]> {
    return guarded(async () => {
      const ids: string[] = [];
      const pages = listPages(
        'files',
        async () => await this.client.files.list({ purpose: 'batch' }, { timeout: OPENAI_TIMEOUTS.call }),
      );
      for await (const files of pages)
        for (const file of files) {
          if (!FileAnswerSchema.safeParse(file).success) throw notOpenAIs('a file', file);
          if (file.filename.startsWith(prefix)) ids.push(file.id);
        }
      return ids;
    });
  }
}

/**
 * The API on a key read when asked (from Secrets Manager in the cloud). A secret that holds no key yet
 * makes the run wait as a refused key does, with the secret's own message saying how to put it in.
 */
export function batchApiWithKey(apiKey: () => Promise<string>, baseURL?: string): () => Promise<BatchApi> {
  return async () => {
    let key: string;
    try {
      key = await apiKey();
    } catch (caught) {
      if (caught instanceof ConfigError) throw new OpenAIUnavailableError(caught.message, 'key_refused');
      throw caught;
    }
    return new OpenAIBatchApi(new OpenAI({ apiKey: key, ...(baseURL ? { baseURL } : {}) }));
  };
}
