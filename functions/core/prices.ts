/**
 * OpenAI Batch API prices in US dollars per million tokens: half the standard price, as published on
 * openai.com/api/pricing (read 2026-11; check there before relying on a figure). A model not listed has
 * no estimate rather than a wrong one. Matching is by longest prefix, so a dated snapshot such as
 * `gpt-4o-mini-2024-07-18` takes its family's price.
 */
export const BATCH_PRICES_PER_MILLION: Readonly<Record<string, { input: number; output: number }>> = {
  'gpt-5': { input: 0.625, output: 5 },
  'gpt-5-mini': { input: 0.125, output: 1 },
  'gpt-5-nano': { input: 0.025, output: 0.2 },
  'gpt-4.1': { input: 1, output: 4 },
  'gpt-4.1-mini': { input: 0.2, output: 0.8 },
  'gpt-4.1-nano': { input: 0.05, output: 0.2 },
  'gpt-4o': { input: 1.25, output: 5 },
  'gpt-4o-mini': { input: 0.075, output: 0.3 },
  o3: { input: 1, output: 4 },
  'o4-mini': { input: 0.55, output: 2.2 },
  'text-embedding-3-small': { input: 0.01, output: 0 },
  'text-embedding-3-large': { input: 0.065, output: 0 },
  'text-embedding-ada-002': { input: 0.05, output: 0 },
  'omni-moderation': { input: 0, output: 0 },
};

/** The batch price of a model, or null when the table does not know it. */
export function priceOf(model: string): { input: number; output: number } | null {
  let best: string | null = null;
  for (const name of Object.keys(BATCH_PRICES_PER_MILLION)) {
    if ((model === name || model.startsWith(`${name}-`)) && (best === null || name.length > best.length))
      best = name;
  }
  return best === null ? null : (BATCH_PRICES_PER_MILLION[best] ?? null);
}

/** Cost in US dollars of token counts per model; null when any model has no price. */
export function costOf(
  tokens: readonly { model: string; inputTokens: number; outputTokens: number }[],
): number | null {
  let total = 0;
  for (const entry of tokens) {
    const price = priceOf(entry.model);
    if (!price) return null;
    total += (entry.inputTokens * price.input + entry.outputTokens * price.output) / 1e6;
  }
  return Math.round(total * 1e9) / 1e9; // to a billionth of a dollar: exact enough, free of float noise
}
