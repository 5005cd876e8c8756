import { z } from 'zod';
import { defineWork } from '../functions/core/work';

/** A product review, one a dataset line. */
const Review = z.object({ id: z.string(), product: z.string(), text: z.string() });

/**
 * What the model answers for each review, as a strict structured output. Every field is required, as
 * OpenAI's strict mode asks; a field that may be absent is `.nullable()`.
 */
const Verdict = z.object({
  sentiment: z.enum(['positive', 'negative', 'mixed', 'neutral']),
  rating: z.number().int().min(1).max(5),
  topics: z.array(z.enum(['quality', 'price', 'delivery', 'support', 'usability'])).max(3),
  summary: z.string(),
  complaint: z.string().nullable(),
});

/**
 * Labels product reviews with a zod schema for the answer: the requests ask for it as a strict structured
 * output, `download` receives the answer parsed and checked as `item.parsed`, and an answer that is not
 * the schema's JSON, a refusal or a cut-off answer ends in errors with its code (sent once more first).
 */
export default defineWork({
  name: 'structured',
  endpoint: '/v1/chat/completions',
  model: 'gpt-4o-mini',
  record: Review,
  outputSchema: Verdict,
  maxOutputRetries: 1,
  expectedOutputTokens: 60,
  upload: (record) => ({
    id: record.id,
    temperature: 0,
    messages: [
      {
        role: 'system',
        content:
          'You label product reviews: the sentiment, a 1-5 rating, up to three topics, a one-sentence summary, and the main complaint if there is one.',
      },
      { role: 'user', content: `Product: ${record.product}\nReview: ${record.text}` },
    ],
  }),
  download: (item) => ({ id: item.id, ...item.parsed, tokens: item.usage?.totalTokens ?? null }),
});
