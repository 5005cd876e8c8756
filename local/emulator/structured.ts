import { estimateInputTokens } from '../../functions/core/tokens';
import { asRecord } from '../../functions/core/values';
import { hash32 } from './random';

/**
 * Content markers that make the emulator answer a chat or responses request badly on purpose, so that a
 * work's structured-output failures can be shown and tested: text that is not JSON, JSON that is not the
 * schema, a refusal, or an answer cut off at the output token limit.
 */
export const OUTPUT_MARKERS = {
  invalidJson: '[[emulator:invalid-json]]',
  /** Not JSON the first time this emulator answers the request's custom_id; a good answer after. */
  invalidJsonOnce: '[[emulator:invalid-json-once]]',
  wrongShape: '[[emulator:wrong-shape]]',
  refusal: '[[emulator:refuse]]',
  truncated: '[[emulator:truncate]]',
} as const;

/** The refusal the emulator gives, worded as a model does. */
export const REFUSAL_TEXT = "I'm sorry, but I can't help with that request.";

/** JSON Schema, as far as the generator reads it. */
type JsonSchema = Record<string, unknown>;

/** What kind of answer a request gets. */
type Outcome = 'json' | 'invalidJson' | 'wrongShape' | 'refusal' | 'truncated';

// Custom_ids already answered with the invalid-json-once marker, per emulator (its answer options).
const answeredOnce = new WeakMap<object, Set<string>>();

/**
 * Shapes the answer of a chat or responses request that asks for a `json_schema` format (or carries an
 * output marker): its text becomes JSON that matches the schema, deterministic for the seed, the
 * custom_id and the request, or the failure its marker asks for. Output tokens follow the new text.
 * Any other answer is returned as it is.
 */
export function withStructuredAnswer(
  endpoint: string,
  customId: string,
  body: Record<string, unknown>,
  answer: { body: Record<string, unknown>; inputTokens: number; outputTokens: number },
  options: { readonly seed: number },
): { body: Record<string, unknown>; inputTokens: number; outputTokens: number } {
  if (endpoint !== '/v1/chat/completions' && endpoint !== '/v1/responses') return answer;
  const schema = schemaOf(endpoint, body);
  // JSON mode: no schema, but an answer that is a JSON object.
  const jsonMode =
    (endpoint === '/v1/chat/completions'
      ? asRecord(body.response_format)
      : asRecord(asRecord(body.text)?.format)
    )?.type === 'json_object';
  const asked = JSON.stringify(
    endpoint === '/v1/responses' ? [body.instructions, body.input] : body.messages,
  );
  const marked = outcomeOf(asked, customId, options);
  if (schema === null && !jsonMode && marked === 'json') return answer;
  const limit = outputLimitOf(endpoint, body);
  const out = structuredClone(answer.body);
  // Every answer of the request (chat's `n` choices) is structured; the first keeps the key it always had.
  const choices = endpoint === '/v1/chat/completions' ? (out.choices as unknown[]).length : 1;
  let outputTokens = 0;
  for (let index = 0; index < choices; index++) {
    const key = index === 0 ? `${customId}:${asked}` : `${customId}:${asked}:${index}`;
    const json = JSON.stringify(schema === null ? {} : matchingValue(schema, schema, options.seed, key, 0));
    // The request's output token limit cuts the JSON as it cuts any answer, at about that many tokens.
    const overLimit = limit !== undefined && estimateInputTokens(json) > limit;
    const outcome: Outcome = marked === 'json' && overLimit ? 'truncated' : marked;
    const text =
      outcome === 'invalidJson'
        ? json.slice(0, Math.max(1, Math.floor(json.length / 2))).concat(' (not JSON)')
        : outcome === 'wrongShape'
          ? JSON.stringify({ unexpected: true })
          : outcome === 'truncated'
            ? json.slice(
                0,
                Math.max(1, overLimit && limit !== undefined ? limit * 4 : Math.floor(json.length / 2)),
              )
            : json;
    const said = outcome === 'refusal' ? REFUSAL_TEXT : text;
    outputTokens += Math.min(Math.max(1, estimateInputTokens(said)), limit ?? Number.POSITIVE_INFINITY);
    if (endpoint === '/v1/chat/completions') shapeChat(out, index, outcome, text);
    else shapeResponse(out, outcome, text);
  }
  const usage = out.usage as Record<string, number>;
  if (endpoint === '/v1/chat/completions') usage.completion_tokens = outputTokens;
  else usage.output_tokens = outputTokens;
  usage.total_tokens = answer.inputTokens + outputTokens;
  return { body: out, inputTokens: answer.inputTokens, outputTokens };
}

/**
 * The output token limit of a request, by the parameter its endpoint takes (chat: max_completion_tokens,
 * or the older max_tokens; completions: max_tokens; responses: max_output_tokens); undefined for none.
 */
export function outputLimitOf(endpoint: string, body: Record<string, unknown>): number | undefined {
  const given =
    endpoint === '/v1/chat/completions'
      ? (body.max_completion_tokens ?? body.max_tokens)
      : endpoint === '/v1/completions'
        ? body.max_tokens
        : endpoint === '/v1/responses'
          ? body.max_output_tokens
          : undefined;
  return typeof given === 'number' && Number.isInteger(given) && given > 0 ? given : undefined;
}

function outcomeOf(asked: string, customId: string, options: object): Outcome {
  if (asked.includes(OUTPUT_MARKERS.refusal)) return 'refusal';
  if (asked.includes(OUTPUT_MARKERS.truncated)) return 'truncated';
  if (asked.includes(OUTPUT_MARKERS.wrongShape)) return 'wrongShape';
  if (asked.includes(OUTPUT_MARKERS.invalidJson)) return 'invalidJson';
  if (asked.includes(OUTPUT_MARKERS.invalidJsonOnce)) {
    const seen = answeredOnce.get(options) ?? new Set<string>();
    answeredOnce.set(options, seen);
    if (!seen.has(customId)) {
      seen.add(customId);
      return 'invalidJson';
    }
  }
  return 'json';
}

function shapeChat(body: Record<string, unknown>, index: number, outcome: Outcome, text: string): void {
  const choice = (body.choices as Record<string, unknown>[])[index] as Record<string, unknown>;
  const message = choice.message as Record<string, unknown>;
  choice.finish_reason = outcome === 'truncated' ? 'length' : 'stop';
  if (outcome === 'refusal') {
    message.content = null;
    message.refusal = REFUSAL_TEXT;
    return;
  }
  message.content = text;
}

function shapeResponse(body: Record<string, unknown>, outcome: Outcome, text: string): void {
  const message = (body.output as Record<string, unknown>[])[0] as Record<string, unknown>;
  const part = (message.content as Record<string, unknown>[])[0] as Record<string, unknown>;
  if (outcome === 'refusal') {
    body.status = 'completed';
    body.completed_at = body.created_at;
    body.incomplete_details = null;
    message.status = 'completed';
    message.content = [{ type: 'refusal', refusal: REFUSAL_TEXT }];
    return;
  }
  part.text = text;
  if (outcome === 'truncated') {
    body.status = 'incomplete';
    body.completed_at = null;
    body.incomplete_details = { reason: 'max_output_tokens' };
    message.status = 'incomplete';
  } else {
    body.status = 'completed';
    body.completed_at = body.created_at;
    body.incomplete_details = null;
    message.status = 'completed';
  }
}

/** The JSON Schema a request asks its answer to follow, or null when it asks for none. */
export function schemaOf(endpoint: string, body: Record<string, unknown>): JsonSchema | null {
  if (endpoint === '/v1/chat/completions') {
    const format = asRecord(body.response_format);
    return format?.type === 'json_schema' ? asRecord(asRecord(format.json_schema)?.schema) : null;
  }
  const format = asRecord(asRecord(body.text)?.format);
  return format?.type === 'json_schema' ? asRecord(format.schema) : null;
}

const WORDS = 'alpha bravo delta echo golf hotel lima mike oscar papa romeo sierra tango victor'.split(' ');
const MAX_DEPTH = 6;

/**
 * A value that matches a JSON Schema of the kind strict structured outputs allow: objects (every
 * property), arrays within their bounds, strings (enums, consts, lengths, common formats), numbers within
 * their bounds, booleans, null, anyOf, and $ref into the root (recursion stops at a null or empty branch).
 * A string `pattern` with no known format is not followed.
 */
export function matchingValue(
  schema: JsonSchema,
  root: JsonSchema,
  seed: number,
  key: string,
  depth: number,
): unknown {
  const h = (salt: string) => hash32(seed, key, salt);
  if (typeof schema.$ref === 'string') {
    const target = resolveRef(schema.$ref, root);
    return target === null ? null : matchingValue(target, root, seed, `${key}/$ref`, depth + 1);
  }
  if ('const' in schema) return schema.const;
  if (Array.isArray(schema.enum) && schema.enum.length > 0)
    return schema.enum[h('enum') % schema.enum.length];
  const branches = Array.isArray(schema.anyOf) ? schema.anyOf.map(asRecord).filter((b) => b !== null) : [];
  if (branches.length > 0) {
    const stop = depth >= MAX_DEPTH ? branches.findIndex((b) => b.type === 'null') : -1;
    const branch = branches[stop >= 0 ? stop : h('anyOf') % branches.length] as JsonSchema;
    return matchingValue(branch, root, seed, `${key}/anyOf`, depth + 1);
  }
  const types = Array.isArray(schema.type) ? (schema.type as string[]) : [schema.type as string];
  // A nullable value is null now and then, and always once deep enough to stop a recursive schema.
  const type =
    types.includes('null') && (depth >= MAX_DEPTH || h('null') % 4 === 0)
      ? 'null'
      : (types.find((t) => t !== 'null') ?? 'null');
  switch (type) {
    case 'object': {
      const out: Record<string, unknown> = {};
      const properties = asRecord(schema.properties) ?? {};
      for (const [name, property] of Object.entries(properties)) {
        const sub = asRecord(property);
        if (sub) out[name] = matchingValue(sub, root, seed, `${key}.${name}`, depth + 1);
      }
      return out;
    }
    case 'array': {
      const min = numberOr(schema.minItems, 0);
      const max = Math.max(min, Math.min(numberOr(schema.maxItems, min + 3), min + 3));
      const count = depth >= MAX_DEPTH ? min : min + (h('items') % (max - min + 1));
      const items = asRecord(schema.items) ?? {};
      return Array.from({ length: count }, (_, i) =>
        matchingValue(items, root, seed, `${key}[${i}]`, depth + 1),
      );
    }
    case 'string':
      return stringOf(schema, h('string'));
    case 'integer':
    case 'number':
      return numberOf(schema, type === 'integer', h('number'));
    case 'boolean':
      return h('boolean') % 2 === 0;
    default:
      return null;
  }
}

function stringOf(schema: JsonSchema, h: number): string {
  const day = 1 + (h % 28);
  const date = `2026-${String(1 + (h % 12)).padStart(2, '0')}-${String(day).padStart(2, '0')}`;
  const hex = (n: number) => (hash32(h, n) >>> 0).toString(16).padStart(8, '0');
  switch (schema.format) {
    case 'date-time':
      return `${date}T${String(h % 24).padStart(2, '0')}:${String(h % 60).padStart(2, '0')}:00Z`;
    case 'date':
      return date;
    case 'time':
      return `${String(h % 24).padStart(2, '0')}:${String(h % 60).padStart(2, '0')}:00`;
    case 'email':
      return `${WORDS[h % WORDS.length]}@example.com`;
    case 'uuid': {
      const s = `${hex(1)}${hex(2)}${hex(3)}${hex(4)}`;
      return `${s.slice(0, 8)}-${s.slice(8, 12)}-4${s.slice(13, 16)}-8${s.slice(17, 20)}-${s.slice(20, 32)}`;
    }
    case 'ipv4':
      return `10.${h % 256}.${(h >>> 8) % 256}.${(h >>> 16) % 256}`;
    case 'hostname':
      return `${WORDS[h % WORDS.length]}.example.com`;
    default:
      break;
  }
  const min = numberOr(schema.minLength, 0);
  const max = numberOr(schema.maxLength, Math.max(min, 40));
  let text = '';
  for (let i = 0; text.length < Math.max(min, 1) || i < 1 + (h % 4); i++) {
    text += `${text ? ' ' : ''}${WORDS[hash32(h, i) % WORDS.length]}`;
  }
  return text.slice(0, max);
}

function numberOf(schema: JsonSchema, integer: boolean, h: number): number {
  const exclusiveMin = typeof schema.exclusiveMinimum === 'number';
  const exclusiveMax = typeof schema.exclusiveMaximum === 'number';
  let low = numberOr(schema.minimum, numberOr(schema.exclusiveMinimum, 0));
  let high = numberOr(schema.maximum, numberOr(schema.exclusiveMaximum, low + 100));
  if (high < low) high = low;
  if (integer) {
    low = exclusiveMin ? Math.floor(low) + 1 : Math.ceil(low);
    high = exclusiveMax ? Math.ceil(high) - 1 : Math.floor(high);
    const span = Math.min(high - low, 1000);
    return span <= 0 ? low : low + (h % (span + 1));
  }
  const fraction = ((h % 999) + 1) / 1000;
  const value = low + (Math.min(high, low + 1000) - low) * fraction;
  return Number(value.toFixed(3));
}

function resolveRef(ref: string, root: JsonSchema): JsonSchema | null {
  if (ref === '#') return root;
  if (!ref.startsWith('#/')) return null;
  let current: unknown = root;
  for (const part of ref.slice(2).split('/'))
    current = asRecord(current)?.[part.replace(/~1/g, '/').replace(/~0/g, '~')];
  return asRecord(current);
}

function numberOr(value: unknown, fallback: number): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : fallback;
}
