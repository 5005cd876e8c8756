import type { DatasetLine } from './dataset';
import { InvariantError, messageOf } from './errors';
import { describeIssues } from './issues';
import {
  type BatchErrorItem,
  type BatchInputItem,
  type Endpoint,
  errorItem,
  jsonLineOf,
  parseInputItem,
} from './items';
import { checkRequestBody } from './request-bodies';
import { withOutputFormat } from './structured';
import { estimateInputTokens } from './tokens';
import { isEmbeddings, type Work } from './work';

/**
 * Where a request's custom_id is claimed: 0 when it may be used, else the line that used it already.
 * (An IdRegistry claims over a whole dataset; prepare claims within one line, Settle finds the rest.)
 */
export interface IdClaims {
  claim(id: string, line: number): number;
  /** The lines that follow are another object's (numbered from 1 again): a pack of objects is read on. */
  nextObject?(): void;
}

/** One OpenAI batch input line, ready to be placed in a part. */
export interface PreparedRequest {
  readonly customId: string;
  readonly model: string;
  /** The dataset line the record came from. */
  readonly line: number;
  /** The JSONL line, without its newline. */
  readonly json: string;
  /** Bytes the line takes in a part file, newline included. */
  readonly bytes: number;
  /** Embedding inputs it carries (1 for other endpoints), counted against the per-batch input limit. */
  readonly inputs: number;
  /** Estimated prompt tokens, for the enqueued-token budget and the cost estimate. */
  readonly estimatedTokens: number;
}

/** What building requests from one dataset line gave. */
export type BuildEvent =
  | { readonly kind: 'request'; readonly request: PreparedRequest; readonly first: boolean }
  | { readonly kind: 'error'; readonly error: BatchErrorItem; readonly record: boolean }
  | { readonly kind: 'skip'; readonly line: number };

/** The per-file limits a request must fit on its own. */
export interface RequestLimits {
  readonly maxBytesPerBatch: number;
  readonly maxEmbeddingInputsPerBatch: number;
}

/** The body field that carries each endpoint's input. */
const MAIN_FIELD: Record<Endpoint, 'messages' | 'input' | 'prompt'> = {
  '/v1/chat/completions': 'messages',
  '/v1/embeddings': 'input',
  '/v1/responses': 'input',
  '/v1/completions': 'prompt',
  '/v1/moderations': 'input',
  '/v1/images/generations': 'prompt',
  '/v1/images/edits': 'prompt',
  '/v1/videos': 'prompt',
};

const ITEM_FIELDS = new Set(['id', 'model', 'body', 'messages', 'input', 'prompt']);

/**
 * Turns dataset lines into OpenAI batch requests through the work's `upload` hook. Every line ends in
 * exactly one outcome per request (or one error or skip per record): a bad line, a hook that throws, an
 * item that fails validation, a duplicate id and a request too large for a batch file are errors that
 * name the line and the reason, never a silent drop.
 */
export async function* buildRequests<R>(
  lines: AsyncIterable<DatasetLine>,
  work: Work<R>,
  ids: IdClaims,
): AsyncGenerator<BuildEvent> {
  for await (const entry of lines) {
    if (entry.kind === 'invalid') {
      yield { kind: 'error', error: entry.error, record: true };
      continue;
    }
    const checked = recordOf(entry, work);
    if ('refused' in checked) {
      yield checked.refused;
      continue;
    }
    const { line } = entry;
    let result: unknown;
    try {
      result = await work.upload(checked.record, { line });
    } catch (caught) {
      yield uploadFailure(line, caught);
      continue;
    }
    const items = itemsOf(result);
    if (items === null) {
      yield { kind: 'skip', line };
      continue;
    }
    for (let i = 0; i < items.length; i++) yield buildRequest(items, i, line, work, ids);
  }
}

/**
 * A dataset record as the work's `upload` hook is given it (checked against the work's record schema,
 * when it has one), or the error that refuses it.
 */
export function recordOf<R>(
  entry: Extract<DatasetLine, { kind: 'record' }>,
  work: Work<R>,
): { readonly record: R } | { readonly refused: BuildEvent } {
  if (!work.record) return { record: entry.record as R };
  const parsed = work.record.safeParse(entry.record);
  if (parsed.success) return { record: parsed.data };
  const { line } = entry;
  const problems = describeIssues(parsed.error, entry.record, false).join('; ');
  return {
    refused: recordError(
      line,
      'invalid_record',
      `line ${line} does not match the work's record schema: ${problems}`,
    ),
  };
}

/** The error of a record whose `upload` hook threw (or returned a promise that rejected). */
export function uploadFailure(line: number, caught: unknown): BuildEvent {
  return recordError(line, 'upload_hook_failed', `line ${line}: the upload hook threw: ${messageOf(caught)}`);
}

/** The items the `upload` hook returned for a record, or null when it returned none (a skip). */
export function itemsOf(result: unknown): readonly unknown[] | null {
  if (result === null || result === undefined || (Array.isArray(result) && result.length === 0)) return null;
  return Array.isArray(result) ? result : [result];
}

function recordError(line: number, code: string, message: string): BuildEvent {
  return { kind: 'error', error: errorItem({ stage: 'upload', code, message, line }), record: true };
}

function requestError(
  id: string | null,
  line: number,
  code: string,
  message: string,
  first: boolean,
  response: BatchErrorItem['response'] = null,
): BuildEvent {
  return {
    kind: 'error',
    error: errorItem({ stage: 'request', id, code, message, line, response }),
    record: first,
  };
}

/**
 * The request item `index` of a record's items becomes, or the error that refuses it. The record's first
 * item's error counts the record as failed.
 */
export function buildRequest<R>(
  items: readonly unknown[],
  index: number,
  line: number,
  work: Work<R>,
  ids: IdClaims,
): BuildEvent {
  let raw: unknown;
  try {
    raw = items[index]; // read here too: an element of the hook's array may be a getter that throws
    return buildChecked(raw, line, work, ids, index === 0);
  } catch (caught) {
    // The item is the hook's value: reading it may throw (a getter, a proxy), which fails this record
    // only. This project's own failure is not the hook's: it goes on.
    if (caught instanceof InvariantError) throw caught;
    let id: string | null = null;
    try {
      id = idOf(raw);
    } catch {
      // its id cannot be read either
    }
    return requestError(
      id,
      line,
      'upload_hook_failed',
      `line ${line}: the upload hook returned an item that could not be read: ${messageOf(caught)}`,
      index === 0,
    );
  }
}

function buildChecked<R>(
  raw: unknown,
  line: number,
  work: Work<R>,
  ids: IdClaims,
  first: boolean,
): BuildEvent {
  const { endpoint } = work.settings;
  const parsed = parseInputItem(raw);
  if (!parsed.success) {
    const problems = describeIssues(parsed.error, raw, false).join('; ');
    const id = idOf(raw);
    return requestError(
      id,
      line,
      'invalid_item',
      `line ${line}: the upload hook returned an invalid item: ${problems}`,
      first,
    );
  }
  const item = parsed.data;
  const built = bodyOf(item, endpoint, work.settings.model);
  if (typeof built === 'string')
    return requestError(item.id, line, 'invalid_item', `line ${line}: ${built}`, first);
  const body = work.structured ? withOutputFormat(built, work.structured) : built;
  if (body.stream === true) {
    return requestError(
      item.id,
      line,
      'streaming_unsupported',
      `line ${line}: "stream: true" is not supported by the Batch API`,
      first,
    );
  }
  const model = body.model;
  if (typeof model !== 'string' || model.length === 0) {
    return requestError(
      item.id,
      line,
      'missing_model',
      `line ${line}: request "${item.id}" has no model: set \`model\` in the work or in the item`,
      first,
    );
  }
  // The item is the hook's value: JSON may not hold it (a BigInt, a cycle), which fails this request only.
  const serialized = jsonLineOf({ custom_id: item.id, method: 'POST', url: endpoint, body });
  if ('problem' in serialized) {
    return requestError(
      item.id,
      line,
      'upload_hook_failed',
      `line ${line}: the upload hook returned a value JSON cannot hold: ${serialized.problem}`,
      first,
    );
  }
  const json = serialized.line;
  // After serializing: a value JSON cannot hold is the hook's error, not OpenAI's.
  if (work.settings.validateRequests) {
    // The body as it is sent: a value JSON writes otherwise (a Date as its string, a toJSON) is checked as
    // OpenAI reads it, once the value the hook gave is refused (the common case pays no second parse).
    const problem =
      checkRequestBody(endpoint, body) &&
      checkRequestBody(endpoint, (JSON.parse(json) as { body: unknown }).body);
    if (problem) {
      const { code, param, message } = problem;
      // The answer OpenAI would give, for a downloadError hook that reads the param and the rule.
      const answer = { error: { message, type: 'invalid_request_error', param, code } };
      return requestError(
        item.id,
        line,
        'invalid_request_body',
        `line ${line}: request "${item.id}" would be refused by OpenAI (${code === null ? '' : `${code}, `}param '${param}'): ${message}`,
        first,
        answer,
      );
    }
  }
  const bytes = Buffer.byteLength(json) + 1;
  if (bytes > work.settings.maxBytesPerBatch) {
    return requestError(
      item.id,
      line,
      'request_too_large',
      `line ${line}: request "${item.id}" is ${bytes} bytes, over maxBytesPerBatch (${work.settings.maxBytesPerBatch})`,
      first,
    );
  }
  const inputs = isEmbeddings(endpoint) ? embeddingInputs(body.input) : 1;
  if (inputs > work.settings.maxEmbeddingInputsPerBatch) {
    return requestError(
      item.id,
      line,
      'too_many_inputs',
      `line ${line}: request "${item.id}" has ${inputs} embedding inputs, over maxEmbeddingInputsPerBatch (${work.settings.maxEmbeddingInputsPerBatch})`,
      first,
    );
  }
  const seenOn = ids.claim(item.id, line);
  if (seenOn !== 0) {
    return requestError(
      item.id,
      line,
      'duplicate_id',
      `line ${line}: id "${item.id}" was already used on line ${seenOn}; ids must be unique within a run`,
      first,
    );
  }
  const main = body[MAIN_FIELD[endpoint]];
  const estimatedTokens = (isEmbeddings(endpoint) && tokenCount(main)) || estimateInputTokens(main);
  return {
    kind: 'request',
    first,
    request: { customId: item.id, model, line, json, bytes, inputs, estimatedTokens },
  };
}

export const isTokens = (value: unknown): value is number[] =>
  Array.isArray(value) && value.length > 0 && value.every((token) => typeof token === 'number');

/**
 * The inputs an embeddings request carries: a string or one array of token integers is one input; an
 * array of strings or of token arrays is one input per element.
 */
export function embeddingInputs(input: unknown): number {
  if (!Array.isArray(input) || isTokens(input)) return 1;
  return Math.max(1, input.length);
}

/** The tokens of an input given as token integers (one array, or an array of arrays), else 0. */
function tokenCount(input: unknown): number {
  if (isTokens(input)) return input.length;
  if (Array.isArray(input) && input.length > 0 && input.every(isTokens))
    return input.reduce((sum: number, tokens: number[]) => sum + tokens.length, 0);
  return 0;
}

/** The request body for an item, or a sentence saying what is wrong with it. */
function bodyOf(
  item: BatchInputItem,
  endpoint: Endpoint,
  defaultModel: string | undefined,
): Record<string, unknown> | string {
  const model = item.model ?? defaultModel;
  if (item.body !== undefined) {
    const body: Record<string, unknown> = { ...item.body };
    if (body.model === undefined && model !== undefined) body.model = model;
    return body;
  }
  const main = MAIN_FIELD[endpoint];
  for (const field of ['messages', 'input', 'prompt'] as const) {
    if (field !== main && item[field] !== undefined) {
      return `"${field}" does not apply to ${endpoint}; give "${main}" (or a raw "body")`;
    }
  }
  if (item[main] === undefined)
    return `request "${item.id}" has no "${main}", which ${endpoint} needs (or give a raw "body")`;
  const body: Record<string, unknown> = { model, [main]: item[main] };
  for (const [key, value] of Object.entries(item)) {
    if (!ITEM_FIELDS.has(key)) body[key] = value;
  }
  return body;
}

function idOf(raw: unknown): string | null {
  if (raw === null || typeof raw !== 'object') return null;
  const id = (raw as { id?: unknown }).id;
  return typeof id === 'string' || typeof id === 'number' ? String(id) : null;
}
