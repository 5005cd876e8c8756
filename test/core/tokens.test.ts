import { describe, expect, it } from 'vitest';
import { estimateInputTokens } from '../../functions/core/tokens';

describe('estimateInputTokens', () => {
  it('counts about four characters a token plus a few tokens a chat message', () => {
    const messages = [
      { role: 'system', content: 'a'.repeat(40) },
      { role: 'user', content: 'b'.repeat(80) },
    ];
    // 120 content characters + 10 role characters = 130 -> 33 tokens, + 2 messages * 4.
    expect(estimateInputTokens(messages)).toBe(41);
  });

  it('grows with the input and counts every string of an embeddings batch', () => {
    expect(estimateInputTokens(['abcd', 'efgh'])).toBe(2);
    expect(estimateInputTokens('x'.repeat(4000))).toBe(1000);
  });

  it('does not count inline image data as text', () => {
    expect(
      estimateInputTokens([
        {
          role: 'user',
          content: [{ type: 'image_url', image_url: { url: `data:image/png;base64,${'A'.repeat(9999)}` } }],
        },
      ]),
    ).toBe(estimateInputTokens([{ role: 'user', content: [{ type: 'image_url', image_url: { url: '' } }] }]));
  });
});
