import OpenAI, { toStreamingFile } from 'openai';
import {
  blockedMessage,
  ConfigError,
  messageOf,
  OpenAIUnavailableError,
  openaiBlockReason,
} from '../core/errors';
import type { BatchApi, CreateBatchInput } from '../core/ports';
import type { BatchView } from '../core/reconciler';

/** The reconciler's view of an OpenAI batch. */
export function viewOf(batch: OpenAI.Batch): BatchView {
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
export const OPENAI_TIMEOUTS = { call: 60_000, upload: 180_000 } as const;

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

async function guarded<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (caught) {
    throw asBatchApiError(caught);
  }
}

/** A {@link BatchApi} on the official client (OpenAI, the emulator, or any compatible base URL). */
export class OpenAIBatchApi implements BatchApi {
  constructor(private readonly client: OpenAI) {}

  uploadFile(filename: string, body: AsyncIterable<Uint8Array>): Promise<string> {
    return guarded(async () => {
      const file = await this.client.files.create(
        { file: toStreamingFile(body, filename), purpose: 'batch' },
        { timeout: OPENAI_TIMEOUTS.upload },
      );
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
    return guarded(async () =>
      viewOf(await this.client.batches.retrieve(batchId, { timeout: OPENAI_TIMEOUTS.call })),
    );
  }

  recentBatches(since: number): Promise<BatchView[]> {
    return guarded(async () => {
      const found: BatchView[] = [];
      for await (const batch of this.client.batches.list({ limit: 100 }, { timeout: OPENAI_TIMEOUTS.call })) {
        if (batch.created_at < since) break; // newest first: the rest are older
        found.push(viewOf(batch));
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
        throw caught;
      }
    });
  }

  async *fileContent(fileId: string): AsyncGenerator<Uint8Array> {
    try {
      const response = await this.client.files.content(fileId, { timeout: OPENAI_TIMEOUTS.call });
      if (!response.body) return;
      for await (const chunk of response.body) yield chunk as Uint8Array;
    } catch (caught) {
      throw asBatchApiError(caught);
    }
  }

  deleteFile(fileId: string): Promise<void> {
    return guarded(async () => {
      try {
        await this.client.files.delete(fileId, { timeout: OPENAI_TIMEOUTS.call });
      } catch (caught) {
        if (!(caught instanceof OpenAI.NotFoundError)) throw caught;
      }
    });
  }

  filesNamed(prefix: string): Promise<string[]> {
    return guarded(async () => {
      const ids: string[] = [];
      for await (const file of this.client.files.list(
        { purpose: 'batch' },
        { timeout: OPENAI_TIMEOUTS.call },
      ))
        if (file.filename.startsWith(prefix)) ids.push(file.id);
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
