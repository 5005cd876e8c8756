import { createReadStream } from 'node:fs';
import { countTokens as cl100k } from 'gpt-tokenizer/encoding/cl100k_base';
import { countTokens as o200k } from 'gpt-tokenizer/encoding/o200k_base';
import { partsOf } from '../functions/core/chunker';
import { readDataset } from '../functions/core/dataset';
import { IdRegistry } from '../functions/core/ids';
import { isImages } from '../functions/core/images';
import { costOf, imagePriceOf, imagesRequestCostOf, priceOf } from '../functions/core/prices';
import { buildRequests, type PreparedRequest } from '../functions/core/requests';
import { formatPromptOf } from '../functions/core/structured';
import type { Work } from '../functions/core/work';

/** Tokens a chat message adds around its content, and the tokens that prime the reply (OpenAI's cookbook). */
const MESSAGE_OVERHEAD = 3;
const REPLY_PRIMING = 3;
/** Refused bodies listed in an estimate (the rest are counted). */
const MAX_LISTED = 20;

/** The tokenizer of a model: o200k for the GPT-4o, 4.1, 5 and o-series families, cl100k for older ones. */
export function tokenizerOf(model: string): { name: string; count: (text: string) => number } {
  const old = /^(gpt-4(?!o|\.)|gpt-3\.5|text-embedding-|text-davinci|davinci|babbage)/.test(model);
  return old
    ? { name: 'cl100k_base', count: (t) => cl100k(t) }
    : { name: 'o200k_base', count: (t) => o200k(t) };
}

/** All text in a value (message contents, inputs, prompts), skipping inline data. */
function textsOf(value: unknown, out: string[] = []): string[] {
  if (typeof value === 'string') {
    if (!value.startsWith('data:')) out.push(value);
  } else if (Array.isArray(value)) for (const v of value) textsOf(v, out);
  else if (value && typeof value === 'object') for (const v of Object.values(value)) textsOf(v, out);
  return out;
}

/** Prompt tokens of one request body, counted with the model's tokenizer. */
export function requestTokens(endpoint: string, body: Record<string, unknown>): number {
  const { count } = tokenizerOf(String(body.model));
  // A json_schema format is shown to the model with the prompt, and billed as prompt tokens.
  const format = formatPromptOf(endpoint, body);
  const formatTokens = format === null ? 0 : count(format);
  if (endpoint === '/v1/chat/completions' && Array.isArray(body.messages)) {
    let tokens = REPLY_PRIMING + formatTokens;
    for (const message of body.messages)
      tokens += MESSAGE_OVERHEAD + textsOf(message).reduce((n, t) => n + count(t), 0);
    return tokens;
  }
  const main = body.messages ?? body.input ?? body.prompt;
  return formatTokens + textsOf(main).reduce((n, t) => n + count(t), 0);
}

/** What a run of a work over a dataset would send, and cost. */
export interface Estimate {
  readonly records: number;
  readonly requests: number;
  /** Requests the builder refused (duplicate id, too large, ...). */
  readonly refused: number;
  /**
   * Requests OpenAI would refuse for their body (`invalid_request_body`, counted in `refused`): how many,
   * and the first few with their line, param and OpenAI's message.
   */
  readonly invalidBodies: {
    readonly count: number;
    readonly first: {
      line: number | null;
      id: string | null;
      code: string;
      param: string;
      message: string;
    }[];
  };
  /** Lines that are not records, or records the upload hook failed on. */
  readonly unreadable: number;
  readonly parts: number;
  readonly inputTokens: number;
  readonly expectedOutputTokens: number;
  /** Images an images work asks for (`n` a request, 1 by default); 0 for other endpoints. */
  readonly images: number;
  readonly byModel: {
    model: string;
    requests: number;
    inputTokens: number;
    outputTokens: number;
    tokenizer: string;
    priced: boolean;
  }[];
  /** At batch prices; null when a model has no price in the table. */
  readonly costUsd: number | null;
}

/**
 * Reads a local dataset through the work's `upload` hook, the request builder and the chunker, exactly as
 * Prepare does, and counts requests, parts and input tokens with a real tokenizer for each model. Output
 * tokens are the work's `expectedOutputTokens` a request (none for embeddings and moderations).
 */
export async function estimate<R>(work: Work<R>, datasetPath: string): Promise<Estimate> {
  const source = createReadStream(datasetPath);
  const byModel = new Map<
    string,
    { model: string; requests: number; inputTokens: number; outputTokens: number }
  >();
  let records = 0;
  let refused = 0;
  let unreadable = 0;
  const invalidBodies = { count: 0, first: [] as Estimate['invalidBodies']['first'] };
  const { endpoint } = work.settings;
  // Images are priced per image, and a video per second: neither by output tokens.
  const noOutput =
    ['/v1/embeddings', '/v1/moderations', '/v1/videos'].includes(endpoint) || isImages(endpoint);
  let images = 0;
  let imagesCost: number | null = 0;
  async function* requests(): AsyncGenerator<PreparedRequest> {
    const lines = readDataset(source, { maxRecordBytes: work.settings.maxRecordBytes });
    async function* counted() {
      for await (const line of lines) {
        records += 1;
        yield line;
      }
    }
    for await (const event of buildRequests(counted(), work, new IdRegistry())) {
      if (event.kind === 'error' && event.error.stage === 'request') refused += 1;
      if (event.kind === 'error' && event.error.code === 'invalid_request_body') {
        invalidBodies.count += 1;
        const answer = (event.error.response as { error?: { code: string; param: string; message: string } })
          ?.error;
        if (answer && invalidBodies.first.length < MAX_LISTED)
          invalidBodies.first.push({
            line: event.error.line,
            id: event.error.id,
            code: answer.code,
            param: answer.param,
            message: answer.message,
          });
      }
      if (event.kind === 'error' && event.error.stage !== 'request') unreadable += 1;
      if (event.kind !== 'request') continue;
      const { body } = JSON.parse(event.request.json) as { body: Record<string, unknown> };
      const entry = byModel.get(event.request.model) ?? {
        model: event.request.model,
        requests: 0,
        inputTokens: 0,
        outputTokens: 0,
      };
      entry.requests += 1;
      entry.inputTokens += requestTokens(work.settings.endpoint, body);
      entry.outputTokens += noOutput ? 0 : work.settings.expectedOutputTokens;
      if (isImages(endpoint)) {
        const cost = imagesRequestCostOf(body);
        images += typeof body.n === 'number' ? body.n : 1;
        imagesCost = imagesCost === null || cost === null ? null : imagesCost + cost;
      }
      byModel.set(entry.model, entry);
      yield event.request;
    }
  }
  let parts = 0;
  for await (const event of partsOf(requests(), work.settings)) if (event.kind === 'close') parts += 1;
  const models = [...byModel.values()];
  return {
    records,
    requests: models.reduce((n, m) => n + m.requests, 0),
    refused,
    invalidBodies,
    unreadable,
    parts,
    inputTokens: models.reduce((n, m) => n + m.inputTokens, 0),
    expectedOutputTokens: models.reduce((n, m) => n + m.outputTokens, 0),
    byModel: models.map((m) => ({
      ...m,
      tokenizer: tokenizerOf(m.model).name,
      priced: (isImages(endpoint) ? imagePriceOf(m.model, 'auto', 'auto') : priceOf(m.model)) !== null,
    })),
    images,
    // Images at their price per image (the prompt's few text tokens are not counted).
    costUsd: isImages(endpoint) ? imagesCost && Math.round(imagesCost * 1e9) / 1e9 : costOf(models),
  };
}
