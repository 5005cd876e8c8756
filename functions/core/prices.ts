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

/** The qualities and sizes GPT Image models are priced by. */
type ImageQuality = 'low' | 'medium' | 'high';
type ImageSize = '1024x1024' | '1024x1536' | '1536x1024';
const IMAGE_QUALITIES: readonly ImageQuality[] = ['low', 'medium', 'high'];
const IMAGE_SIZES: readonly ImageSize[] = ['1024x1024', '1024x1536', '1536x1024'];

/**
 * Batch prices in US dollars per image, by model, quality and size: half the standard per-image price
 * (read 2026-11; gpt-image-1-mini from its model page on developers.openai.com, gpt-image-1 as fal.ai
 * passes OpenAI's list on; check openai.com/api/pricing before relying on a figure). Other image models
 * (gpt-image-1.5, DALL·E) and video models have no price here, so no estimate rather than a wrong one.
 */
export const BATCH_IMAGE_PRICES: Readonly<Record<string, Record<ImageQuality, Record<ImageSize, number>>>> = {
  'gpt-image-1': {
    low: { '1024x1024': 0.0055, '1024x1536': 0.008, '1536x1024': 0.008 },
    medium: { '1024x1024': 0.021, '1024x1536': 0.0315, '1536x1024': 0.0315 },
    high: { '1024x1024': 0.0835, '1024x1536': 0.125, '1536x1024': 0.125 },
  },
  'gpt-image-1-mini': {
    low: { '1024x1024': 0.0025, '1024x1536': 0.003, '1536x1024': 0.003 },
    medium: { '1024x1024': 0.0055, '1024x1536': 0.0075, '1536x1024': 0.0075 },
    high: { '1024x1024': 0.018, '1024x1536': 0.026, '1536x1024': 0.026 },
  },
};

/**
 * The batch price of one image, or null when the table does not know the model or the size. `auto` (or
 * no quality or size) is priced as the dearest the model may choose, so that an estimate is never low.
 */
export function imagePriceOf(model: string, size: unknown, quality: unknown): number | null {
  let best: string | null = null;
  for (const name of Object.keys(BATCH_IMAGE_PRICES)) {
    if ((model === name || model.startsWith(`${name}-`)) && (best === null || name.length > best.length))
      best = name;
  }
  const table = best === null ? undefined : BATCH_IMAGE_PRICES[best];
  if (!table) return null;
  const auto = (value: unknown) => value === undefined || value === null || value === 'auto';
  const qualities = auto(quality) ? IMAGE_QUALITIES : IMAGE_QUALITIES.filter((q) => q === quality);
  const sizes = auto(size) ? IMAGE_SIZES : IMAGE_SIZES.filter((s) => s === size);
  const prices = qualities.flatMap((q) => sizes.map((s) => table[q][s]));
  return prices.length === 0 ? null : Math.max(...prices);
}

/** The batch price of an images request body (`n` images, 1 by default), or null when unknown. */
export function imagesRequestCostOf(body: Record<string, unknown>): number | null {
  const price = imagePriceOf(String(body.model), body.size, body.quality);
  const n = typeof body.n === 'number' && Number.isInteger(body.n) && body.n > 0 ? body.n : 1;
  return price === null ? null : price * n;
}
