import { estimateInputTokens } from '../../functions/core/tokens';
import { dimensionsOf, pngOf } from './png';
import { hash32 } from './random';

/** The image and video endpoints a batch may target, besides the text ones. */
export const MEDIA_ENDPOINTS = ['/v1/images/generations', '/v1/images/edits', '/v1/videos'] as const;

/** An image or video answer: its body and token usage, as {@link answer} in responses.ts gives them. */
export interface MediaAnswer {
  body: Record<string, unknown>;
  inputTokens: number;
  outputTokens: number;
}

/** The sizes an `ImagesResponse` may name (other sizes are drawn, but not named in the answer). */
const ANSWER_SIZES = new Set(['1024x1024', '1024x1536', '1536x1024']);
const QUALITIES = new Set(['low', 'medium', 'high']);

/**
 * Image tokens a GPT Image model writes for one image, by quality and size (OpenAI's image guide: a
 * square low-quality image is 272 tokens, a portrait high-quality one 6,240).
 */
const OUTPUT_IMAGE_TOKENS: Record<string, Record<string, number>> = {
  low: { '1024x1024': 272, '1024x1536': 408, '1536x1024': 400 },
  medium: { '1024x1024': 1056, '1024x1536': 1584, '1536x1024': 1568 },
  high: { '1024x1024': 4160, '1024x1536': 6240, '1536x1024': 6208 },
};
/** Input image tokens counted for each image an edit is given (a low-fidelity 1024x1024 input). */
const INPUT_IMAGE_TOKENS = 194;

const isGptImage = (model: string) => model.startsWith('gpt-image') || model.startsWith('chatgpt-image');

/**
 * A deterministic `ImagesResponse` for an image generation or edit: `n` images, each the `b64_json` of a
 * real PNG drawn from the seed and the request (at the requested size where the emulator draws it, else
 * 64x64). GPT Image models answer with their settings and token usage; DALL·E 3 with a revised prompt.
 * The emulator always draws PNG, whatever `output_format` asks.
 */
export function imagesAnswer(
  endpoint: string,
  customId: string,
  body: Record<string, unknown>,
  createdSeconds: number,
  seed: number,
): MediaAnswer {
  const model = String(body.model);
  const prompt = typeof body.prompt === 'string' ? body.prompt : '';
  const n = typeof body.n === 'number' && Number.isInteger(body.n) && body.n > 0 ? body.n : 1;
  const { width, height } = dimensionsOf(body.size);
  const data = Array.from({ length: n }, (_, index) => {
    const image: Record<string, unknown> = {
      b64_json: pngOf(width, height, hash32(seed, customId, prompt, index)).toString('base64'),
    };
    if (model.startsWith('dall-e-3')) image.revised_prompt = `A picture of ${prompt}`.slice(0, 4000);
    return image;
  });
  const textTokens = Math.max(1, estimateInputTokens(prompt));
  if (!isGptImage(model)) {
    return { inputTokens: textTokens, outputTokens: 0, body: { created: createdSeconds, data } };
  }
  const size = typeof body.size === 'string' && ANSWER_SIZES.has(body.size) ? body.size : '1024x1024';
  const quality = typeof body.quality === 'string' && QUALITIES.has(body.quality) ? body.quality : 'medium';
  const imageTokens =
    endpoint === '/v1/images/edits' && Array.isArray(body.images)
      ? body.images.length * INPUT_IMAGE_TOKENS
      : 0;
  const inputTokens = textTokens + imageTokens;
  const outputTokens = n * (OUTPUT_IMAGE_TOKENS[quality]?.[size] ?? 1056);
  return {
    inputTokens,
    outputTokens,
    body: {
      created: createdSeconds,
      data,
      background: body.background === 'transparent' ? 'transparent' : 'opaque',
      output_format: 'png',
      size,
      quality,
      usage: {
        input_tokens: inputTokens,
        input_tokens_details: { text_tokens: textTokens, image_tokens: imageTokens },
        output_tokens: outputTokens,
        output_tokens_details: { image_tokens: outputTokens, text_tokens: 0 },
        total_tokens: inputTokens + outputTokens,
      },
    },
  };
}

/**
 * A deterministic video object (`VideoResource`) for a `/v1/videos` request: the job as OpenAI describes
 * it once done, with the requested size and length (OpenAI's defaults, 720x1280 and 4 seconds, else). The
 * video's bytes are not part of a batch answer: OpenAI serves them at `/v1/videos/{id}/content`.
 */
export function videoAnswer(
  customId: string,
  body: Record<string, unknown>,
  createdSeconds: number,
  seed: number,
): MediaAnswer {
  const prompt = typeof body.prompt === 'string' ? body.prompt : null;
  const suffix = hash32(seed, customId, prompt ?? '')
    .toString(16)
    .padStart(8, '0');
  return {
    inputTokens: 0,
    outputTokens: 0,
    body: {
      id: `video_${suffix}${customId.length.toString(16)}`,
      object: 'video',
      model: typeof body.model === 'string' ? body.model : 'sora-2',
      status: 'completed',
      progress: 100,
      created_at: createdSeconds,
      completed_at: createdSeconds,
      expires_at: createdSeconds + 24 * 3600,
      prompt,
      size: typeof body.size === 'string' ? body.size : '720x1280',
      seconds: typeof body.seconds === 'string' ? body.seconds : '4',
      remixed_from_video_id: null,
      error: null,
    },
  };
}
