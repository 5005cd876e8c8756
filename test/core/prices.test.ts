import { describe, expect, it } from 'vitest';
import { costOf, priceOf } from '../../functions/core/prices';

describe('prices', () => {
  it('matches a dated snapshot to its family by longest prefix', () => {
    expect(priceOf('gpt-4o-mini-2024-07-18')).toEqual({ input: 0.075, output: 0.3 });
    expect(priceOf('gpt-4o-2024-08-06')).toEqual({ input: 1.25, output: 5 });
    expect(priceOf('gpt-4o')).toEqual({ input: 1.25, output: 5 });
    expect(priceOf('gpt-4omega')).toBeNull();
  });

  it('prices token counts per model, and gives no figure rather than a wrong one', () => {
    expect(costOf([{ model: 'gpt-4o-mini', inputTokens: 2_000_000, outputTokens: 1_000_000 }])).toBe(0.45);
    expect(
      costOf([
        { model: 'text-embedding-3-small', inputTokens: 1_000_000, outputTokens: 0 },
        { model: 'gpt-4o-mini', inputTokens: 0, outputTokens: 0 },
      ]),
    ).toBe(0.01);
    expect(costOf([{ model: 'my-fine-tune', inputTokens: 1, outputTokens: 1 }])).toBeNull();
  });
});
