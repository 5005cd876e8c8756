/**
 * The project's error types. Each sets `name` so that the state machine's Retry/Catch can match on it,
 * and carries a message a user can act on.
 */

/** A work's configuration breaks a rule; the message names the field, the value and the rule. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    message: string,
    /** Every rule broken, one line each: `field: rule (got value)`. */
    readonly problems: readonly string[] = [],
  ) {
    super(message);
  }
}

/** The dataset cannot be read at all (missing object, empty prefix); bad lines are error records instead. */
export class DatasetError extends Error {
  override readonly name = 'DatasetError';
  constructor(
    message: string,
    /** The 1-based line the problem is on, when there is one. */
    readonly line?: number,
  ) {
    super(message);
  }
}

/** OpenAI refused or failed something for a batch; carries the batch id and OpenAI's code. */
export class OpenAIBatchError extends Error {
  override readonly name = 'OpenAIBatchError';
  constructor(
    message: string,
    readonly batchId?: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

/** A run's estimated cost is above the work's `maxCostUsd`; nothing was sent to OpenAI. */
export class CostLimitError extends Error {
  override readonly name = 'CostLimitError';
  constructor(
    message: string,
    readonly estimatedUsd: number,
    readonly maxCostUsd: number,
  ) {
    super(message);
  }
}

/** Something the code assumes cannot happen did; a bug, never bad input. */
export class InvariantError extends Error {
  override readonly name = 'InvariantError';
}

/** The message of any caught value, without assuming it is an Error. */
export function messageOf(caught: unknown): string {
  // What a hook threw may be anything: this names it, and never throws itself (it runs in the guards that
  // turn a hook's failure into its record's error).
  try {
    if (caught instanceof Error) return String(caught.message);
    if (typeof caught === 'string') return caught;
    const json = JSON.stringify(caught);
    if (json !== undefined) return json;
  } catch {
    // a getter that throws, a cycle: String below, or the fallback
  }
  try {
    return String(caught);
  } catch {
    return `a value that cannot be shown (${Object.prototype.toString.call(caught)})`;
  }
}

/** Why OpenAI cannot be used now; mirrors the run's `blocked.reason`. */
export type OpenAIBlockReason = 'openai_unavailable' | 'key_refused' | 'quota_exhausted';

/**
 * OpenAI cannot be used now, for a reason that is the run's and not a request's: an outage (5xx, 429,
 * a timeout, a dropped connection), a refused API key (401, 403) or an exhausted quota or billing limit.
 * A run that meets it waits and goes on by itself once OpenAI answers; it never fails a run or turns
 * records into errors.
 */
export class OpenAIUnavailableError extends Error {
  override readonly name = 'OpenAIUnavailableError';
  constructor(
    /** A sentence for a person: what OpenAI said, and what to do when a person must act. */
    message: string,
    readonly reason: OpenAIBlockReason,
    /** The HTTP status OpenAI answered, when it answered. */
    readonly status?: number,
  ) {
    super(message);
  }
}

/** OpenAI error codes that mean the account cannot pay for more work now. */
const QUOTA_CODES = new Set([
  'insufficient_quota',
  'billing_hard_limit_reached',
  'billing_not_active',
  'billing_limit_user_error',
]);

/** Network error codes (Node, undici) of a request that may work when sent again. */
const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
]);

/** Error class names of the official client for a request that got no answer. */
const CONNECTION_ERRORS = new Set(['APIConnectionError', 'APIConnectionTimeoutError']);

function field(value: unknown, name: string): unknown {
  return value !== null && typeof value === 'object' ? (value as Record<string, unknown>)[name] : undefined;
}

/** True for a failure to reach a server at all (anywhere in the error's cause chain). */
function isNetworkFailure(caught: unknown): boolean {
  for (
    let error = caught, depth = 0;
    error !== undefined && depth < 5;
    error = field(error, 'cause'), depth++
  ) {
    const name = field(error, 'name');
    const code = field(error, 'code');
    if (typeof name === 'string' && CONNECTION_ERRORS.has(name)) return true;
    if (typeof code === 'string' && NETWORK_CODES.has(code)) return true;
    if (error instanceof TypeError && /fetch failed|terminated/.test(error.message)) return true;
  }
  return false;
}

/**
 * Why an error from an OpenAI call makes the run wait instead of failing something, or null when it is
 * about the request itself (a 400, a 404) and belongs to the part. Reads the status, code and type the
 * official client puts on its errors, without importing it.
 */
export function openaiBlockReason(caught: unknown): OpenAIBlockReason | null {
  if (caught instanceof OpenAIUnavailableError) return caught.reason;
  const status = field(caught, 'status');
  const code = field(caught, 'code');
  const type = field(caught, 'type') ?? field(field(caught, 'error'), 'type');
  if (
    (typeof code === 'string' && QUOTA_CODES.has(code)) ||
    (typeof type === 'string' && QUOTA_CODES.has(type))
  )
    return 'quota_exhausted';
  if (typeof status === 'number') {
    if (status === 401 || status === 403) return 'key_refused';
    if (status === 408 || status === 409 || status === 429 || status >= 500) return 'openai_unavailable';
    return null;
  }
  return isNetworkFailure(caught) ? 'openai_unavailable' : null;
}

/** The sentence a person reads for a blocked run. */
export function blockedMessage(reason: OpenAIBlockReason, detail: string): string {
  switch (reason) {
    case 'key_refused':
      return `OpenAI refused the API key: ${detail}`;
    case 'quota_exhausted':
      return `OpenAI refused the work for the account's quota or billing: ${detail}`;
    case 'openai_unavailable':
      return `OpenAI is unavailable: ${detail}`;
  }
}
