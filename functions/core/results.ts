import { z } from 'zod';
import { type BatchErrorItem, type BatchOutputItem, errorItem, type Usage } from './items';
import { LineSplitter, type RawLine } from './lines';
import { asRecord, isRecord } from './values';

/** One line of an OpenAI batch output or error file. */
export const ResultLineSchema = z.object({
  id: z.string().nullish(),
  custom_id: z.string(),
  response: z
    .object({
      status_code: z.number().int(),
      request_id: z.string().nullish(),
      body: z.unknown(),
    })
    .nullish(),
  error: z.object({ code: z.string().nullish(), message: z.string().nullish() }).nullish(),
});

/** One line of an OpenAI batch output or error file. */
export type ResultLine = z.infer<typeof ResultLineSchema>;

/** What one result line turned out to be. */
export type ResultEvent =
  | { readonly kind: 'output'; readonly item: BatchOutputItem }
  | { readonly kind: 'error'; readonly item: BatchErrorItem }
  | { readonly kind: 'malformed'; readonly fileLine: number; readonly item: BatchErrorItem };

/** Error codes after which sending the same request again may succeed. */
const RETRYABLE_CODES = new Set(['batch_expired', 'request_timeout', 'server_error', 'rate_limit_exceeded']);

/** True when a failed request is worth resubmitting (expiry, timeouts, 429 and 5xx). */
export function isRetryable(item: BatchErrorItem): boolean {
  if (RETRYABLE_CODES.has(item.code)) return true;
  return item.statusCode !== null && (item.statusCode === 429 || item.statusCode >= 500);
}

/** An output line can hold a whole response; this bound only stops a corrupt file from exhausting memory. */
const MAX_RESULT_LINE_BYTES = 256 * 1024 * 1024;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Parses an OpenAI output or error file into results, one line at a time. A line that is not a result
 * (truncated file, not JSON) is a `malformed` event naming the file line, never a crash; the requests it
 * would have answered are found missing by the caller and settled as errors.
 */
export async function* readResults(
  chunks: AsyncIterable<Uint8Array>,
  batchId: string | null,
  lineOf: (customId: string) => number | null = () => null,
): AsyncGenerator<ResultEvent> {
  for await (const events of readResultChunks(chunks, batchId, lineOf)) yield* events;
}

/**
 * {@link readResults} a chunk of the file at a time: the results its lines complete, so that a reader
 * awaits once a chunk rather than once a result.
 */
export async function* readResultChunks(
  chunks: AsyncIterable<Uint8Array>,
  batchId: string | null,
  lineOf: (customId: string) => number | null = () => null,
): AsyncGenerator<ResultEvent[]> {
  const splitter = new LineSplitter(MAX_RESULT_LINE_BYTES);
  for await (const chunk of chunks) {
    const events: ResultEvent[] = [];
    for (const raw of splitter.linesIn(chunk)) {
      const event = resultEventOf(raw, batchId, lineOf);
      if (event) events.push(event);
    }
    if (events.length > 0) yield events;
  }
  const last = splitter.end();
  const event = last && resultEventOf(last, batchId, lineOf);
  if (event) yield [event];
}

/** What one line of a result file is; null for an empty line. */
function resultEventOf(
  raw: RawLine,
  batchId: string | null,
  lineOf: (customId: string) => number | null,
): ResultEvent | null {
  if (raw.bytes === null)
    return malformed(raw.line, batchId, `is ${raw.length} bytes, too long to be a result`);
  if (raw.bytes.length === 0) return null;
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(raw.bytes));
  } catch {
    return malformed(raw.line, batchId, 'is not valid JSON (truncated or corrupt file)');
  }
  const result = commonResultLine(value) ?? ResultLineSchema.safeParse(value).data;
  if (!result)
    return malformed(raw.line, batchId, 'is not a batch result line (no custom_id or a bad response)');
  return resultOf(result, batchId, lineOf(result.custom_id));
}

const isNullishString = (value: unknown): boolean =>
  value === null || value === undefined || typeof value === 'string';

/**
 * The result line {@link ResultLineSchema} would give, checked by hand for the shapes OpenAI writes (the
 * schema costs as much as the rest of a result); null when in doubt, and the schema decides.
 */
function commonResultLine(value: unknown): ResultLine | null {
  if (!isRecord(value)) return null;
  const { id, custom_id, response, error } = value;
  if (typeof custom_id !== 'string' || !isNullishString(id)) return null;
  let checkedResponse: ResultLine['response'];
  if (response === null || response === undefined) checkedResponse = response;
  else if (
    isRecord(response) &&
    Number.isSafeInteger(response.status_code) &&
    isNullishString(response.request_id) &&
    response.body !== undefined // the schema wants the key, whatever its value
  ) {
    checkedResponse = {
      status_code: response.status_code as number,
      request_id: response.request_id as string | null | undefined,
      body: response.body,
    };
  } else return null;
  let checkedError: ResultLine['error'];
  if (error === null || error === undefined) checkedError = error;
  else if (isRecord(error) && isNullishString(error.code) && isNullishString(error.message)) {
    checkedError = {
      code: error.code as string | null | undefined,
      message: error.message as string | null | undefined,
    };
  } else return null;
  return {
    id: id as string | null | undefined,
    custom_id,
    response: checkedResponse,
    error: checkedError,
  };
}

function malformed(fileLine: number, batchId: string | null, why: string): ResultEvent {
  const message = `line ${fileLine} of the result file of batch ${batchId ?? '(unknown)'} ${why}`;
  return {
    kind: 'malformed',
    fileLine,
    item: errorItem({ stage: 'openai', code: 'malformed_result', message, batchId }),
  };
}

/** A parsed result line as an output or an error item. */
export function resultOf(result: ResultLine, batchId: string | null, line: number | null): ResultEvent {
  const id = result.custom_id;
  const response = result.response ?? null;
  const requestId = response?.request_id ?? null;
  const body = asRecord(response?.body);
  if (response && response.status_code >= 200 && response.status_code < 300 && body && !result.error) {
    return {
      kind: 'output',
      item: {
        id,
        status: 'success',
        statusCode: response.status_code,
        requestId,
        batchId,
        model: typeof body.model === 'string' ? body.model : null,
        content: contentOf(body),
        embedding: embeddingOf(body),
        usage: usageOf(body.usage),
        response: body,
      },
    };
  }
  const apiError = asRecord(body?.error);
  const code = stringOr(
    result.error?.code ?? apiError?.code,
    response ? `http_${response.status_code}` : 'unknown_error',
  );
  const message = stringOr(
    result.error?.message ?? apiError?.message,
    response ? `OpenAI answered HTTP ${response.status_code}` : 'OpenAI gave no response and no error',
  );
  return {
    kind: 'error',
    item: errorItem({
      stage: 'openai',
      id,
      code,
      message,
      line,
      statusCode: response?.status_code ?? null,
      requestId,
      batchId,
      response: body,
    }),
  };
}

function stringOr(value: unknown, fallback: string): string {
  return typeof value === 'string' && value.length > 0 ? value : fallback;
}

function numberAt(record: Record<string, unknown> | null, ...path: string[]): number {
  let current: unknown = record;
  for (const key of path) current = asRecord(current)?.[key];
  return typeof current === 'number' ? current : 0;
}

/** The answer's text: chat's first choice, a response's output text, a completion's text. */
function contentOf(body: Record<string, unknown>): string | null {
  const choices = body.choices;
  if (Array.isArray(choices)) {
    const choice = asRecord(choices[0]);
    const message = asRecord(choice?.message);
    if (message && typeof message.content === 'string') return message.content;
    if (choice && typeof choice.text === 'string') return choice.text;
    return null;
  }
  if (typeof body.output_text === 'string') return body.output_text;
  if (Array.isArray(body.output)) {
    const texts: string[] = [];
    for (const entry of body.output) {
      const content = asRecord(entry)?.content;
      if (!Array.isArray(content)) continue;
      for (const part of content) {
        const record = asRecord(part);
        if (record?.type === 'output_text' && typeof record.text === 'string') texts.push(record.text);
      }
    }
    return texts.length > 0 ? texts.join('') : null;
  }
  return null;
}

function embeddingOf(body: Record<string, unknown>): number[] | null {
  if (!Array.isArray(body.data)) return null;
  const embedding = asRecord(body.data[0])?.embedding;
  // Asked with `encoding_format: base64`: the little-endian float32 values, in base64.
  if (typeof embedding === 'string') {
    const bytes = Buffer.from(embedding, 'base64');
    if (bytes.length % 4 !== 0) return null;
    const values: number[] = [];
    for (let at = 0; at < bytes.length; at += 4) values.push(bytes.readFloatLE(at));
    return values;
  }
  return Array.isArray(embedding) && embedding.every((x) => typeof x === 'number') ? embedding : null;
}

/** Usage in one shape, from chat/completions/embeddings (`prompt_tokens`) or responses (`input_tokens`). */
export function usageOf(value: unknown): Usage | null {
  const usage = asRecord(value);
  if (!usage) return null;
  const inputTokens = numberAt(usage, 'prompt_tokens') || numberAt(usage, 'input_tokens');
  const outputTokens = numberAt(usage, 'completion_tokens') || numberAt(usage, 'output_tokens');
  return {
    inputTokens,
    outputTokens,
    totalTokens: numberAt(usage, 'total_tokens') || inputTokens + outputTokens,
    cachedTokens:
      numberAt(usage, 'prompt_tokens_details', 'cached_tokens') ||
      numberAt(usage, 'input_tokens_details', 'cached_tokens'),
    reasoningTokens:
      numberAt(usage, 'completion_tokens_details', 'reasoning_tokens') ||
      numberAt(usage, 'output_tokens_details', 'reasoning_tokens'),
  };
}
