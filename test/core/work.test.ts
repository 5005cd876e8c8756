import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../functions/core/errors';
import { defineWork, type WorkConfig } from '../../functions/core/work';

function problemsOf(config: unknown): readonly string[] {
  try {
    defineWork(config as WorkConfig);
  } catch (caught) {
    if (caught instanceof ConfigError) return caught.problems;
    throw caught;
  }
  throw new Error('expected a ConfigError');
}

describe('defineWork', () => {
  it('fills every default for a minimal work', () => {
    const work = defineWork({ name: 'tiny' });
    expect(work.settings).toEqual({
      name: 'tiny',
      completionWindow: '24h',
      endpoint: '/v1/chat/completions',
      allowSameDataset: false,
      cleanUp: true,
      maxRequestsPerBatch: 50_000,
      maxBytesPerBatch: 190_000_000,
      maxEmbeddingInputsPerBatch: 50_000,
      maxActiveBatches: 20,
      minPollSeconds: 30,
      maxPollSeconds: 900,
      validateRequests: true,
      webhooks: false,
      maxResubmits: 2,
      maxOutputRetries: 0,
      maxRecordBytes: 10 * 1024 * 1024,
      expectedOutputTokens: 200,
      prepareConcurrency: 4,
      shardBytes: 64 * 1024 * 1024,
    });
    expect(typeof work.upload).toBe('function');
  });

  it('names the field, the value and the rule for each broken limit', () => {
    const problems = problemsOf({ name: 'ok', maxRequestsPerBatch: 60_000, maxBytesPerBatch: 300_000_000 });
    expect(problems).toEqual([
      "maxRequestsPerBatch: must be at most 50,000 (OpenAI's limit per batch file) (got 60000)",
      "maxBytesPerBatch: must be at most 200,000,000 bytes (OpenAI's 200 MB per batch file) (got 300000000)",
    ]);
  });

  it.each([
    [{ name: 'Bad Name' }, /^name: must start with a letter.*\(got "Bad Name"\)$/],
    [{}, /^name: is required/],
    [{ name: 'a', completionWindow: '48h' }, /^completionWindow: must be "24h".*\(got "48h"\)$/],
    [
      { name: 'a', endpoint: '/v1/images' },
      /^endpoint: must be one of \/v1\/chat\/completions.*\(got "\/v1\/images"\)$/,
    ],
    [{ name: 'a', maxActiveBatches: 1.5 }, /^maxActiveBatches: must be a whole number \(got 1.5\)$/],
    [
      { name: 'a', maxActiveBatches: '3' },
      /^maxActiveBatches: maxActiveBatches must be a number \(got "3"\)$/,
    ],
    [
      { name: 'a', minPollSeconds: 600, maxPollSeconds: 60 },
      /^minPollSeconds: must not be above maxPollSeconds \(got 600\)$/,
    ],
    [{ name: 'a', maxCostUsd: -1 }, /^maxCostUsd: must be above 0 \(got -1\)$/],
    [{ name: 'a', maxRequestPerBatch: 10 }, /^\(root\): Unrecognized key: "maxRequestPerBatch"$/],
    [{ name: 'a', upload: 'nope' }, /^upload: must be a function \(got string\)$/],
    [{ name: 'a', record: 42 }, /^record: must be a zod schema$/],
  ])('refuses %j', (config, pattern) => {
    const problems = problemsOf(config);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(pattern);
  });

  it('puts the work name and every problem in the message', () => {
    expect(() => defineWork({ name: 'mine', maxResubmits: 99 })).toThrow(
      /^Invalid work "mine":\n {2}- maxResubmits: must be at most 10 \(got 99\)$/,
    );
  });

  it('refuses something that is not an object', () => {
    expect(() => defineWork(null as unknown as WorkConfig)).toThrow(ConfigError);
  });
});
