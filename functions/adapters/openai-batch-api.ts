import OpenAI, { toStreamingFile } from 'openai';
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

/** A {@link BatchApi} on the official client (OpenAI, the emulator, or any compatible base URL). */
export class OpenAIBatchApi implements BatchApi {
  constructor(private readonly client: OpenAI) {}

  async uploadFile(filename: string, body: AsyncIterable<Uint8Array>): Promise<string> {
    const file = await this.client.files.create({ file: toStreamingFile(body, filename), purpose: 'batch' });
    return file.id;
  }

  async createBatch(input: CreateBatchInput): Promise<BatchView> {
    // Never retried by the client: an answer lost after OpenAI acted would create the batch twice.
    const batch = await this.client.batches.create(
      {
        input_file_id: input.fileId,
        endpoint: input.endpoint as OpenAI.BatchCreateParams['endpoint'],
        completion_window: '24h',
        metadata: input.metadata,
      },
      { maxRetries: 0 },
    );
    return viewOf(batch);
  }

  async getBatch(batchId: string): Promise<BatchView> {
    return viewOf(await this.client.batches.retrieve(batchId));
  }

  async recentBatches(since: number): Promise<BatchView[]> {
    const found: BatchView[] = [];
    for await (const batch of this.client.batches.list({ limit: 100 })) {
      if (batch.created_at < since) break; // newest first: the rest are older
      found.push(viewOf(batch));
    }
    return found;
  }

  async cancelBatch(batchId: string): Promise<BatchView> {
    try {
      return viewOf(await this.client.batches.cancel(batchId, { maxRetries: 0 }));
    } catch (caught) {
      if (caught instanceof OpenAI.ConflictError) return this.getBatch(batchId); // already finished
      throw caught;
    }
  }

  async *fileContent(fileId: string): AsyncGenerator<Uint8Array> {
    const response = await this.client.files.content(fileId);
    if (!response.body) return;
    for await (const chunk of response.body) yield chunk as Uint8Array;
  }

  async deleteFile(fileId: string): Promise<void> {
    try {
      await this.client.files.delete(fileId);
    } catch (caught) {
      if (!(caught instanceof OpenAI.NotFoundError)) throw caught;
    }
  }

  async filesNamed(prefix: string): Promise<string[]> {
    const ids: string[] = [];
    for await (const file of this.client.files.list({ purpose: 'batch' }))
      if (file.filename.startsWith(prefix)) ids.push(file.id);
    return ids;
  }
}
