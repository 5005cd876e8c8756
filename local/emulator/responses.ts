import { embeddingInputs, isTokens } from '../../functions/core/requests';
import { estimateInputTokens } from '../../functions/core/tokens';
import { imagesAnswer, videoAnswer } from './images';
import { hash32 } from './random';
import { outputLimitOf, withStructuredAnswer } from './structured';
import { mainFieldOf } from './validation';

const WORDS = (
  'the a batch answer model token result request data line record file output input window ' +
  'quick steady clear bright simple careful useful exact small large every each one two three'
).split(' ');

/** What a request produced: its body and its token usage. */
export interface Answer {
  body: Record<string, unknown>;
  inputTokens: number;
  outputTokens: number;
}

/** Options that shape answers. */
export interface AnswerOptions {
  readonly seed: number;
  /** Dimensions of an embedding when the request does not ask for any. @default 256 */
  readonly embeddingDimensions: number;
}

function sentence(seed: number, key: string, words: number): string {
  const out: string[] = [];
  for (let i = 0; i < words; i++) out.push(WORDS[hash32(seed, key, i) % WORDS.length] ?? 'token');
  const text = out.join(' ');
  return `${text.charAt(0).toUpperCase()}${text.slice(1)}.`;
}

/**
 * A deterministic, well-formed answer for one request: the same seed, custom_id and body give the same
 * answer. Prompt tokens grow with the input; the answer's text is a few pseudo-random words, or JSON that
 * matches the request's `json_schema` format (see {@link withStructuredAnswer} for the output markers).
 */
export function answer(
  endpoint: string,
  customId: string,
  body: Record<string, unknown>,
  createdSeconds: number,
  options: AnswerOptions,
): Answer {
  const plain = plainAnswer(endpoint, customId, body, createdSeconds, options);
  return withStructuredAnswer(endpoint, customId, body, plain, options);
}

function plainAnswer(
  endpoint: string,
  customId: string,
  body: Record<string, unknown>,
  createdSeconds: number,
  options: AnswerOptions,
): Answer {
  if (endpoint === '/v1/images/generations' || endpoint === '/v1/images/edits')
    return imagesAnswer(endpoint, customId, body, createdSeconds, options.seed);
  if (endpoint === '/v1/videos') return videoAnswer(customId, body, createdSeconds, options.seed);
  const model = String(body.model);
  const key = `${customId}:${JSON.stringify(body[mainFieldOf(endpoint)] ?? '')}`;
  const h = hash32(options.seed, key);
  const inputTokens = Math.max(1, estimateInputTokens(body[mainFieldOf(endpoint)]));
  // The output token limit the request sets, if any: an answer stops there (finish_reason `length`).
  const limit = outputLimitOf(endpoint, body);
  const wanted = (i: number) => 5 + ((i === 0 ? h : hash32(options.seed, `${key}:choice`, i)) % 36);
  const wordsOf = (i: number) => Math.min(wanted(i), limit ?? Number.POSITIVE_INFINITY);
  const cut = (i: number) => limit !== undefined && wanted(i) > limit;
  const outputTokens = endpoint === '/v1/embeddings' || endpoint === '/v1/moderations' ? 0 : wordsOf(0);
  const text = sentence(options.seed, key, outputTokens);
  const suffix = h.toString(16).padStart(8, '0');
  // `n` answers, each billed (chat and completions), and completions' prompts each answered n times.
  const n = typeof body.n === 'number' && Number.isInteger(body.n) && body.n > 1 ? body.n : 1;
  const choiceText = (i: number) => (i === 0 ? text : sentence(options.seed, `${key}:${i}`, wordsOf(i)));
  switch (endpoint) {
    case '/v1/chat/completions': {
      const choices = Array.from({ length: n }, (_, index) => ({
        index,
        message: { role: 'assistant', content: choiceText(index), refusal: null, annotations: [] },
        logprobs: null,
        finish_reason: cut(index) ? 'length' : 'stop',
      }));
      const completionTokens = choices.reduce((sum, _, i) => sum + wordsOf(i), 0);
      return {
        inputTokens,
        outputTokens: completionTokens,
        body: {
          id: `chatcmpl-${suffix}${customId.length}`,
          object: 'chat.completion',
          created: createdSeconds,
          model,
          choices,
          usage: {
            prompt_tokens: inputTokens,
            completion_tokens: completionTokens,
            total_tokens: inputTokens + completionTokens,
            prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
            completion_tokens_details: {
              reasoning_tokens: 0,
              audio_tokens: 0,
              accepted_prediction_tokens: 0,
              rejected_prediction_tokens: 0,
            },
          },
          service_tier: 'default',
          system_fingerprint: 'fp_emulator',
        },
      };
    }
    case '/v1/completions': {
      // A string or one array of tokens is one prompt; an array of strings or of token arrays, one each
      // (counted as an embeddings request's inputs are).
      const choices = Array.from({ length: embeddingInputs(body.prompt) * n }, (_, index) => ({
        text: choiceText(index),
        index,
        logprobs: null,
        finish_reason: cut(index) ? 'length' : 'stop',
      }));
      const completionTokens = choices.reduce((sum, _, i) => sum + wordsOf(i), 0);
      return {
        inputTokens,
        outputTokens: completionTokens,
        body: {
          id: `cmpl-${suffix}`,
          object: 'text_completion',
          created: createdSeconds,
          model,
          choices,
          usage: {
            prompt_tokens: inputTokens,
            completion_tokens: completionTokens,
            total_tokens: inputTokens + completionTokens,
          },
        },
      };
    }
    case '/v1/responses':
      return {
        inputTokens,
        outputTokens,
        body: {
          id: `resp_${suffix}`,
          object: 'response',
          created_at: createdSeconds,
          status: cut(0) ? 'incomplete' : 'completed',
          completed_at: cut(0) ? null : createdSeconds,
          error: null,
          incomplete_details: cut(0) ? { reason: 'max_output_tokens' } : null,
          // A Response echoes the settings it ran with, OpenAI's defaults where the request gave none.
          instructions: body.instructions ?? null,
          max_output_tokens: body.max_output_tokens ?? null,
          model,
          output: [
            {
              type: 'message',
              id: `msg_${suffix}`,
              status: cut(0) ? 'incomplete' : 'completed',
              role: 'assistant',
              content: [{ type: 'output_text', text, annotations: [], logprobs: [] }],
            },
          ],
          parallel_tool_calls: body.parallel_tool_calls ?? true,
          previous_response_id: body.previous_response_id ?? null,
          reasoning: { effort: null, summary: null },
          service_tier: 'default',
          store: body.store ?? true,
          temperature: body.temperature ?? 1,
          text: body.text ?? { format: { type: 'text' } },
          tool_choice: body.tool_choice ?? 'auto',
          tools: body.tools ?? [],
          top_p: body.top_p ?? 1,
          truncation: body.truncation ?? 'disabled',
          usage: {
            input_tokens: inputTokens,
            input_tokens_details: { cached_tokens: 0, cache_write_tokens: 0 },
            output_tokens: outputTokens,
            output_tokens_details: { reasoning_tokens: 0 },
            total_tokens: inputTokens + outputTokens,
          },
          metadata: body.metadata ?? {},
        },
      };
    case '/v1/embeddings': {
      // One array of token integers is one input (an array of them, or of strings, one each).
      const inputs = Array.isArray(body.input) && !isTokens(body.input) ? body.input : [body.input];
      const dimensions = typeof body.dimensions === 'number' ? body.dimensions : options.embeddingDimensions;
      // `encoding_format: base64` gives each vector as the base64 of its little-endian float32 values.
      const encoded = (values: number[]) =>
        body.encoding_format === 'base64'
          ? Buffer.from(new Float32Array(values).buffer).toString('base64')
          : values;
      return {
        inputTokens,
        outputTokens: 0,
        body: {
          object: 'list',
          data: inputs.map((input, index) => ({
            object: 'embedding',
            index,
            embedding: encoded(vector(hash32(options.seed, JSON.stringify(input)), dimensions)),
          })),
          model,
          usage: { prompt_tokens: inputTokens, total_tokens: inputTokens },
        },
      };
    }
    default:
      return {
        inputTokens,
        outputTokens: 0,
        body: {
          id: `modr-${suffix}`,
          model,
          results: [moderation(options.seed, key)],
        },
      };
  }
}

/** Moderation categories, and the input types each is scored on (omni models score images for some). */
const MODERATION_CATEGORIES: Record<string, readonly string[]> = {
  harassment: ['text'],
  'harassment/threatening': ['text'],
  hate: ['text'],
  'hate/threatening': ['text'],
  illicit: ['text'],
  'illicit/violent': ['text'],
  'self-harm': ['text'],
  'self-harm/intent': ['text'],
  'self-harm/instructions': ['text'],
  sexual: ['text'],
  'sexual/minors': ['text'],
  violence: ['text'],
  'violence/graphic': ['text'],
};

/** A harmless moderation result: every category scored low, none flagged. */
function moderation(seed: number, key: string): Record<string, unknown> {
  const categories: Record<string, boolean> = {};
  const scores: Record<string, number> = {};
  const applied: Record<string, readonly string[]> = {};
  for (const [index, [name, types]] of Object.entries(MODERATION_CATEGORIES).entries()) {
    categories[name] = false;
    scores[name] = Number(((hash32(seed, key, index) % 1000) / 1e6).toFixed(6));
    applied[name] = types;
  }
  return {
    flagged: false,
    categories,
    category_scores: scores,
    category_applied_input_types: applied,
  };
}

/** A unit-length pseudo-random vector. */
function vector(seed: number, dimensions: number): number[] {
  const values: number[] = [];
  let norm = 0;
  for (let i = 0; i < dimensions; i++) {
    const v = ((hash32(seed, i) % 20001) - 10000) / 10000;
    values.push(v);
    norm += v * v;
  }
  const scale = norm > 0 ? 1 / Math.sqrt(norm) : 1;
  return values.map((v) => Number((v * scale).toFixed(6)));
}
