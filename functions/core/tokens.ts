/** Tokens OpenAI adds around each chat message (role and separators). */
const PER_MESSAGE_TOKENS = 4;
/** English text averages about four characters a token in OpenAI's tokenizers. */
const CHARS_PER_TOKEN = 4;

/**
 * A fast estimate of the prompt tokens of a request's input (messages, input or prompt): text length
 * over four, plus a few tokens a message. Used on the hot path for the enqueued-token budget, where an
 * estimate within tens of percent is enough; the `estimate` command counts with a real tokenizer.
 */
export function estimateInputTokens(input: unknown): number {
  let characters = 0;
  let messages = 0;
  const visit = (value: unknown, depth: number): void => {
    if (typeof value === 'string') {
      // Images and audio sent inline count as their own token rate at OpenAI; a data URL is not text.
      characters += value.startsWith('data:') ? 0 : value.length;
    } else if (Array.isArray(value)) {
      for (const element of value) visit(element, depth + 1);
    } else if (value !== null && typeof value === 'object') {
      if (depth === 1 && 'role' in value) messages += 1;
      for (const element of Object.values(value)) visit(element, depth + 1);
    }
  };
  visit(input, 0);
  return Math.ceil(characters / CHARS_PER_TOKEN) + messages * PER_MESSAGE_TOKENS;
}
