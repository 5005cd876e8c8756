import { describe, expect, it } from 'vitest';
import { imagePriceOf, imagesRequestCostOf } from '../../functions/core/prices';

describe('image prices', () => {
  it('gives half the standard price per image, by model, quality and size', () => {
    expect(imagePriceOf('gpt-image-1', '1024x1024', 'low')).toBe(0.0055);
    expect(imagePriceOf('gpt-image-1', '1536x1024', 'high')).toBe(0.125);
    expect(imagePriceOf('gpt-image-1-mini', '1024x1536', 'medium')).toBe(0.0075);
  });

  it('prices auto, or nothing given, as the dearest the model may choose', () => {
    expect(imagePriceOf('gpt-image-1', 'auto', 'auto')).toBe(0.125);
    expect(imagePriceOf('gpt-image-1', undefined, 'low')).toBe(0.008);
    expect(imagePriceOf('gpt-image-1-mini', '1024x1024', undefined)).toBe(0.018);
  });

  it('knows no price for other models, sizes and qualities', () => {
    expect(imagePriceOf('dall-e-3', '1024x1024', 'standard')).toBeNull();
    expect(imagePriceOf('gpt-image-1.5', '1024x1024', 'low')).toBeNull();
    expect(imagePriceOf('gpt-image-1', '256x256', 'low')).toBeNull();
    expect(imagePriceOf('gpt-image-1', '1024x1024', 'hd')).toBeNull();
  });

  it('costs a request n images', () => {
    expect(
      imagesRequestCostOf({ model: 'gpt-image-1', size: '1024x1024', quality: 'low', n: 3 }),
    ).toBeCloseTo(0.0165);
    expect(imagesRequestCostOf({ model: 'gpt-image-1-mini', size: '1024x1024', quality: 'low' })).toBe(
      0.0025,
    );
    expect(imagesRequestCostOf({ model: 'dall-e-2', size: '256x256' })).toBeNull();
  });
});
