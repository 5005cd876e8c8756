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
  if (caught instanceof Error) return caught.message;
  if (typeof caught === 'string') return caught;
  try {
    return JSON.stringify(caught) ?? String(caught);
  } catch {
    return String(caught);
  }
}
