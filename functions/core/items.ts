import { z } from 'zod';
import { messageOf } from './errors';
import { showValue } from './issues';

/** The OpenAI endpoints a batch can target. */
export const ENDPOINTS = [
  '/v1/chat/completions',
  '/v1/embeddings',
  '/v1/responses',
  '/v1/completions',
  '/v1/moderations',
  '/v1/images/generations',
  '/v1/images/edits',
  '/v1/videos',
] as const;

/** One of {@link ENDPOINTS}. */
export type Endpoint = (typeof ENDPOINTS)[number];

/**
 * What a work's `upload` hook returns for a record: one request. `id` becomes the request's `custom_id`
 * and joins the result back to the record. Either `body` (sent as is) or the endpoint's main field
 * (`messages`, `input`, `prompt`); every other key is a request parameter (`temperature`, ...).
 */
export const BatchInputItemSchema = z
  .object({
    id: z
      .union([z.string().min(1, 'must not be empty'), z.number().int()], {
        error: 'must be a non-empty string or an integer',
      })
      .transform(String)
      .pipe(
        z
          .string()
          .max(512, 'must be at most 512 characters')
          .refine(
            wellFormed,
            'must be whole text: it holds half of a character (a string cut inside an emoji?)',
          ),
      ),
    model: z.string().min(1, 'must not be empty').optional(),
    body: z.record(z.string(), z.unknown(), { error: 'must be an object' }).optional(),
    messages: z.array(z.unknown(), { error: 'must be an array of messages' }).min(1).optional(),
    input: z.unknown().optional(),
    prompt: z.unknown().optional(),
  })
  .catchall(z.unknown());

/**
 * True when a string holds no half of a surrogate pair (in unicode mode \p{Cs} matches only a lone one):
 * such an id cannot be written as UTF-8, nor named in a file of the images endpoints.
 */
function wellFormed(text: string): boolean {
  return !/\p{Cs}/u.test(text);
}

/** The keys {@link BatchInputItemSchema} names, in its order (its output keeps this order, then the rest). */
const ITEM_KEYS = new Set(['id', 'model', 'body', 'messages', 'input', 'prompt']);

/**
 * `BatchInputItemSchema.safeParse`, with the common shape taken by hand (it is on the per-request path):
 * a plain object with a string or safe-integer id, a non-empty model or none, no `body`, and `messages`
 * a non-empty array or none. Anything else goes to the schema, which words the issues.
 */
export function parseInputItem(raw: unknown): ReturnType<typeof BatchInputItemSchema.safeParse> {
  const item = commonItem(raw);
  return item ? { success: true, data: item } : BatchInputItemSchema.safeParse(raw);
}

/** The schema's output for a value of the common shape (a new object, keys in the schema's order), else null. */
function commonItem(raw: unknown): BatchInputItem | null {
  if (raw === null || typeof raw !== 'object') return null;
  const prototype = Object.getPrototypeOf(raw);
  if (prototype !== Object.prototype && prototype !== null) return null;
  const value = raw as Record<string, unknown>;
  const rawId = value.id;
  let id: string;
  if (typeof rawId === 'string') {
    if (rawId.length === 0 || rawId.length > 512 || !wellFormed(rawId)) return null;
    id = rawId;
  } else if (Number.isSafeInteger(rawId)) {
    id = String(rawId);
  } else {
    return null;
  }
  const item: Record<string, unknown> = { id };
  const model = value.model;
  if (model !== undefined && (typeof model !== 'string' || model.length === 0)) return null;
  if ('model' in value) item.model = model;
  if (value.body !== undefined) return null;
  if ('body' in value) item.body = undefined;
  const messages = value.messages;
  if (messages !== undefined) {
    if (!Array.isArray(messages) || messages.length === 0) return null;
    // The schema gives a copy of the array (holes read as undefined); so does this.
    const copy = new Array<unknown>(messages.length);
    for (let i = 0; i < messages.length; i++) copy[i] = messages[i];
    item.messages = copy;
  } else if ('messages' in value) {
    item.messages = undefined;
  }
  const input = value.input;
  if (input !== undefined || 'input' in value) item.input = input;
  const prompt = value.prompt;
  if (prompt !== undefined || 'prompt' in value) item.prompt = prompt;
  for (const key in value) {
    if (!ITEM_KEYS.has(key) && key !== '__proto__') item[key] = value[key];
  }
  return item as BatchInputItem;
}

/** A request as the `upload` hook may write it (an integer id is accepted). */
export type BatchInputItemInput = z.input<typeof BatchInputItemSchema>;
/** A request after validation (the id is a string). */
export type BatchInputItem = z.output<typeof BatchInputItemSchema>;

/** Token usage as OpenAI reports it, in whichever naming the endpoint uses. */
export const UsageSchema = z.object({
  inputTokens: z.number(),
  outputTokens: z.number(),
  totalTokens: z.number(),
  cachedTokens: z.number(),
  reasoningTokens: z.number(),
});

/** Token usage of one request. */
export type Usage = z.infer<typeof UsageSchema>;

/** A successful result, handed to the work's `download` hook. */
export const BatchOutputItemSchema = z.object({
  /** The request's custom_id: the id the `upload` hook gave. */
  id: z.string(),
  status: z.literal('success'),
  statusCode: z.number().int(),
  /** OpenAI's request id, for support tickets. */
  requestId: z.string().nullable(),
  batchId: z.string().nullable(),
  model: z.string().nullable(),
  /** The text answer: chat's first choice, a response's output text, a completion's text; else null. */
  content: z.string().nullable(),
  /** The first embedding of an embeddings request; else null. */
  embedding: z.array(z.number()).nullable(),
  usage: UsageSchema.nullable(),
  /** The whole response body (an images answer's `b64_json` replaced by the key of its stored object). */
  response: z.record(z.string(), z.unknown()),
  /** An images answer's images, each stored as an object under `runs/<id>/images/`; absent elsewhere. */
  images: z
    .array(z.object({ key: z.string(), index: z.number().int(), revisedPrompt: z.string().nullable() }))
    .optional(),
});

/** A successful result. */
export type BatchOutputItem = z.infer<typeof BatchOutputItemSchema>;

/** Where an error arose, from reading the dataset to OpenAI's answer. */
export const ERROR_STAGES = ['dataset', 'upload', 'request', 'openai', 'download'] as const;

/** A failed record or request, handed to the work's `downloadError` hook and written to errors/. */
export const BatchErrorItemSchema = z.object({
  /** The request's custom_id, or null where the record never got one (an unreadable line). */
  id: z.string().nullable(),
  status: z.literal('failed'),
  stage: z.enum(ERROR_STAGES),
  /** A stable, machine-readable code: OpenAI's own code where it gave one. */
  code: z.string(),
  message: z.string(),
  /** The 1-based dataset line the record came from, where known. */
  line: z.number().int().nullable(),
  /**
   * The dataset object (its key) that line is in, where known: line numbers count per object, so in a
   * dataset of several objects (a prefix) the line alone does not say which record it was.
   */
  object: z.string().nullable().optional(),
  statusCode: z.number().int().nullable(),
  requestId: z.string().nullable(),
  batchId: z.string().nullable(),
  /** OpenAI's response body for an HTTP failure or an answer that could not be used; else null. */
  response: z.record(z.string(), z.unknown()).nullable(),
  /** The raw answer text of a structured output that could not be used (`invalid_output`, ...). */
  content: z.string().nullable().optional(),
});

/** A failed record or request. */
export type BatchErrorItem = z.infer<typeof BatchErrorItemSchema>;

/** An error item from the fields that matter; the rest default to null. */
export function errorItem(
  fields: Pick<BatchErrorItem, 'stage' | 'code' | 'message'> & Partial<BatchErrorItem>,
): BatchErrorItem {
  return {
    id: null,
    line: null,
    object: null,
    statusCode: null,
    requestId: null,
    batchId: null,
    response: null,
    ...fields,
    status: 'failed',
  };
}

/** A value as one JSON line, or why JSON cannot hold it (a BigInt, a cycle, a function, a throwing toJSON). */
export function jsonLineOf(value: unknown): { readonly line: string } | { readonly problem: string } {
  try {
    const line = JSON.stringify(value);
    if (line === undefined) return { problem: `${showValue(value)} is not a JSON value` };
    return { line };
  } catch (caught) {
    return { problem: messageOf(caught) };
  }
}
