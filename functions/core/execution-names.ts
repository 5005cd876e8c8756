import { createHash, randomBytes } from 'node:crypto';
import { ConfigError } from './errors';

/** Step Functions' longest execution name. */
export const MAX_EXECUTION_NAME = 80;

/**
 * Characters Step Functions refuses in an execution name: white space, brackets, wildcards, the special
 * characters it lists, and control characters.
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it refuses
const REFUSED = /[\s<>{}[\]?*"#%\\^|~`$&,;:/\u0000-\u001f\u007f-\u009f]/u;

/** Why a run id cannot be an execution name, or null when it can. */
export function runIdProblem(runId: string): string | null {
  const length = [...runId].length;
  if (length === 0) return 'a run id must not be empty';
  if (length > MAX_EXECUTION_NAME)
    return `a run id has at most ${MAX_EXECUTION_NAME} characters (it is the name of the run's first execution); "${runId}" has ${length}`;
  const bad = REFUSED.exec(runId);
  if (bad)
    return `a run id is the name of an execution, which must not contain ${JSON.stringify(bad[0])} (use letters, digits, - and _): "${runId}"`;
  return null;
}

/** Checks a run id a user gives (`start --run-id`, `local --run-id`): the name of the run's first execution. */
export function checkRunId(runId: string): string {
  const problem = runIdProblem(runId);
  if (problem) throw new ConfigError(`Invalid run id: ${problem}.`);
  return runId;
}

/** Why an execution after the run's first one starts: a hand-over, a webhook, a person resuming it. */
export type ExecutionKind = 'next' | 'wake' | 'resume';

/** Random characters that make two names made in the same millisecond differ. */
const NONCE_CHARS = 6;

/** Six random base-36 characters. */
export function randomNonce(): string {
  const n = randomBytes(4).readUInt32BE(0);
  return n.toString(36).padStart(NONCE_CHARS, '0').slice(-NONCE_CHARS);
}

/**
 * The name of a new execution of a run: `<run id>-<kind>-<time><nonce>`, unique (the time and a random
 * nonce) and valid (1-80 characters Step Functions allows) for any valid run id. A run id too long to
 * keep whole is cut, with a hash of the whole id in place of its end, so that the name still tells runs
 * apart.
 */
export function executionName(
  runId: string,
  kind: ExecutionKind,
  now: number,
  nonce: string = randomNonce(),
): string {
  const problem = runIdProblem(runId);
  if (problem) throw new ConfigError(`Cannot name an execution of run "${runId}": ${problem}.`);
  const suffix = `-${kind}-${Math.max(0, Math.floor(now)).toString(36)}${nonce}`;
  const room = MAX_EXECUTION_NAME - suffix.length;
  if (runId.length <= room) return `${runId}${suffix}`;
  const hash = createHash('sha256').update(runId).digest('hex').slice(0, 8);
  const budget = room - hash.length - 1;
  let head = '';
  for (const char of runId) {
    if (head.length + char.length > budget) break; // whole code points: never half a surrogate pair
    head += char;
  }
  return `${head}-${hash}${suffix}`;
}
