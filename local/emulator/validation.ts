import type { Readable } from 'node:stream';
import { linesOf } from '../../functions/core/lines';
import { checkRequestBody } from '../../functions/core/request-bodies';
import { embeddingInputs as inputsOf } from '../../functions/core/requests';
import { estimateInputTokens } from '../../functions/core/tokens';

/** One entry of a failed batch's `errors.data`. */
export interface BatchErrorEntry {
  code: string;
  message: string;
  param: string | null;
  line: number | null;
}

/** What validating a batch input file found. */
export interface ValidatedInput {
  /** Requests in the file. */
  total: number;
  /** The one model of the file (null when no line named one). */
  model: string | null;
  /** Estimated prompt tokens of the whole file, for the enqueued-token limit. */
  inputTokens: number;
  /** Validation failures; any entry fails the batch. */
  errors: BatchErrorEntry[];
  /**
   * Each request's fate when processed, by input order: 0 ok, 1 fails with 400 (a body OpenAI's schema
   * refuses, or the fail marker), 2 fails with 500.
   */
  outcomes: Uint8Array;
}

/** Limits a batch input file must keep. */
export interface InputLimits {
  readonly maxRequests: number;
  readonly maxEmbeddingInputs: number;
  /** Models the Batch API accepts; undefined accepts any. */
  readonly models?: readonly string[] | undefined;
}

/** Content markers that make the emulator fail a request on purpose, to exercise error files. */
export const FAIL_MARKERS = {
  badRequest: '[[emulator:fail]]',
  serverError: '[[emulator:fail-500]]',
} as const;

const MAIN_FIELD: Record<string, { field: string; label: string; api: string }> = {
  '/v1/chat/completions': { field: 'messages', label: 'Messages', api: 'Chat Completions' },
  '/v1/embeddings': { field: 'input', label: 'Input', api: 'Embeddings' },
  '/v1/responses': { field: 'input', label: 'Input', api: 'Responses' },
  '/v1/completions': { field: 'prompt', label: 'Prompt', api: 'Completions' },
  '/v1/moderations': { field: 'input', label: 'Input', api: 'Moderations' },
  '/v1/images/generations': { field: 'prompt', label: 'Prompt', api: 'Images' },
  '/v1/images/edits': { field: 'prompt', label: 'Prompt', api: 'Images' },
  '/v1/videos': { field: 'prompt', label: 'Prompt', api: 'Videos' },
};

const MAX_ERRORS = 1000;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The request body's main field (what its prompt tokens are counted from). */
export function mainFieldOf(endpoint: string): string {
  return MAIN_FIELD[endpoint]?.field ?? 'input';
}

/**
 * Validates a batch input file the way OpenAI does, streaming: every line must be a JSON request for
 * the batch's endpoint with a unique custom_id and the file's one model. Errors carry OpenAI's codes,
 * params, messages and 1-based line numbers.
 */
export async function validateInput(
  stream: Readable,
  endpoint: string,
  limits: InputLimits,
): Promise<ValidatedInput> {
  const errors: BatchErrorEntry[] = [];
  const fail = (code: string, message: string, param: string | null, line: number | null) => {
    if (errors.length < MAX_ERRORS) errors.push({ code, message, param, line });
  };
  const ids = new Set<string>();
  const outcomes: number[] = [];
  let model: string | null = null;
  let inputTokens = 0;
  let embeddingInputs = 0;
  let total = 0;
  const main = MAIN_FIELD[endpoint];

  for await (const raw of linesOf(stream, 256 * 1024 * 1024)) {
    const { line } = raw;
    if (raw.bytes === null || raw.bytes.length === 0) {
      if (raw.bytes === null)
        fail('invalid_json_line', 'This line is not parseable as valid JSON.', null, line);
      continue;
    }
    total += 1;
    if (total > limits.maxRequests) continue;
    let text: string;
    let request: Record<string, unknown>;
    try {
      text = utf8.decode(raw.bytes);
      const parsed: unknown = JSON.parse(text);
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
        throw new Error('not an object');
      request = parsed as Record<string, unknown>;
    } catch {
      fail('invalid_json_line', 'This line is not parseable as valid JSON.', null, line);
      outcomes.push(0);
      continue;
    }
    outcomes.push(
      text.includes(FAIL_MARKERS.serverError) ? 2 : text.includes(FAIL_MARKERS.badRequest) ? 1 : 0,
    );
    const missing = ['custom_id', 'method', 'url', 'body'].find(
      (key) => request[key] === undefined || request[key] === null,
    );
    if (missing) {
      fail('missing_required_parameter', `Missing required parameter: '${missing}'.`, missing, line);
      continue;
    }
    const body = request.body;
    if (typeof request.custom_id !== 'string' || request.custom_id.length === 0) {
      fail('invalid_type', "Invalid type for 'custom_id': expected a string.", 'custom_id', line);
      continue;
    }
    if (request.method !== 'POST') {
      fail(
        'invalid_value',
        `Invalid value: '${String(request.method)}'. Supported values are: 'POST'.`,
        'method',
        line,
      );
      continue;
    }
    if (request.url !== endpoint) {
      fail(
        'invalid_url',
        'The URL provided for this request does not match the batch endpoint.',
        'url',
        line,
      );
      continue;
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      fail('invalid_type', "Invalid type for 'body': expected an object.", 'body', line);
      continue;
    }
    const fields = body as Record<string, unknown>;
    if (fields.stream === true) {
      fail(
        'streaming_unsupported',
        `${main?.api ?? 'This API'}: Streaming is not supported in the Batch API.`,
        'body.stream',
        line,
      );
      continue;
    }
    if (typeof fields.model !== 'string' || fields.model.length === 0) {
      fail('invalid_request', 'Model parameter is required.', 'body.model', line);
      continue;
    }
    if (limits.models && !limits.models.includes(fields.model)) {
      fail(
        'model_not_found',
        `The provided model '${fields.model}' is not supported by the Batch API.`,
        'body.model',
        line,
      );
      continue;
    }
    if (main && fields[main.field] === undefined) {
      fail('invalid_request', `${main.label} parameter is required.`, `body.${main.field}`, line);
      continue;
    }
    if (ids.has(request.custom_id)) {
      fail(
        'duplicate_custom_id',
        `The custom_id '${request.custom_id}' for this request is a duplicate of another request. The custom_id parameter must be unique for each request in a batch.`,
        'custom_id',
        line,
      );
      continue;
    }
    ids.add(request.custom_id);
    if (model === null) model = fields.model;
    else if (fields.model !== model) {
      fail(
        'mismatched_model',
        `The model '${fields.model}' for this request does not match the rest of the batch. Each batch must contain requests for a single model.`,
        'body.model',
        line,
      );
      continue;
    }
    // A body OpenAI's schema refuses is not a validation error: the request fails alone, with a 400.
    if (checkRequestBody(endpoint, fields)) outcomes[outcomes.length - 1] = 1;
    // One array of token integers is one input, as OpenAI counts them (and Prepare does).
    if (endpoint === '/v1/embeddings') embeddingInputs += inputsOf(fields.input);
    inputTokens += estimateInputTokens(fields[main?.field ?? 'input']);
  }
  if (total === 0) fail('empty_file', 'The batch input file is empty.', null, null);
  if (total > limits.maxRequests) {
    fail(
      'too_many_tasks',
      `The batch input file has ${total} requests, more than the limit of ${limits.maxRequests}.`,
      null,
      null,
    );
  }
  if (embeddingInputs > limits.maxEmbeddingInputs) {
    fail(
      'too_many_tasks',
      `The batch has ${embeddingInputs} embedding inputs, more than the limit of ${limits.maxEmbeddingInputs}.`,
      null,
      null,
    );
  }
  return { total, model, inputTokens, errors, outcomes: Uint8Array.from(outcomes) };
}
