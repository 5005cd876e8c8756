import type { z } from 'zod';

/** The value found at `path` inside `input`, or undefined. */
function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let current: unknown = input;
  for (const key of path) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<PropertyKey, unknown>)[key];
  }
  return current;
}

/** A short, log-safe rendering of a value a user supplied (long values are cut). */
export function showValue(value: unknown): string {
  if (typeof value === 'function') return 'a function';
  if (value === undefined) return 'nothing';
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** The dotted path of an issue, `(root)` for the value itself. */
export function pathOf(path: readonly PropertyKey[]): string {
  if (path.length === 0) return '(root)';
  return path.map((key) => (typeof key === 'number' ? `[${key}]` : String(key))).join('.');
}

/**
 * One line per zod issue: `field: rule (got value)`. With `withValues` false the offending value is not
 * shown, for inputs that may hold a user's record contents.
 */
export function describeIssues(error: z.ZodError, input: unknown, withValues = true): string[] {
  return error.issues.map((issue) => {
    const where = pathOf(issue.path);
    if (!withValues || issue.code === 'unrecognized_keys') return `${where}: ${issue.message}`;
    return `${where}: ${issue.message} (got ${showValue(valueAt(input, issue.path))})`;
  });
}
