/** Tokens OpenAI adds around each chat message (role and separators). */
const PER_MESSAGE_TOKENS = 4;
/** English text averages about four characters a token in OpenAI's tokenizers. */
const CHARS_PER_TOKEN = 4;
/** How deep, and over how many values, the estimate walks a body (see visit). */
const MAX_DEPTH = 64;
const MAX_NODES = 1_000_000;

/**
 * A fast estimate of the prompt tokens of a request's input (messages, input or prompt): text length
 * over four, plus a few tokens a message. Used on the hot path for the enqueued-token budget, where an
 * estimate within tens of percent is enough; the `estimate` command counts with a real tokenizer.
 */
export function estimateInputTokens(input: unknown): number {
  const tally = { characters: 0, messages: 0, nodes: 0 };
  visit(input, 0, tally);
  return Math.ceil(tally.characters / CHARS_PER_TOKEN) + tally.messages * PER_MESSAGE_TOKENS;
}

/** Adds a value's text characters and chat messages to `tally` (a module function: no closure a call). */
function visit(
  value: unknown,
  depth: number,
  tally: { characters: number; messages: number; nodes: number },
): void {
  // A body JSON could write may still hold a cycle (behind a toJSON): the walk stops at a depth and a
  // count no request reaches, rather than run forever.
  if (depth > MAX_DEPTH || ++tally.nodes > MAX_NODES) return;
  if (typeof value === 'string') {
    // Images and audio sent inline count as their own token rate at OpenAI; a data URL is not text.
    if (!value.startsWith('data:')) tally.characters += value.length;
  } else if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) visit(value[i], depth + 1, tally);
  } else if (value !== null && typeof value === 'object') {
    if (depth === 1 && 'role' in value) tally.messages += 1;
    for (const element of Object.values(value)) visit(element, depth + 1, tally);
  }
}
