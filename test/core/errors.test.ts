import { describe, expect, it } from 'vitest';
import {
  blockedMessage,
  messageOf,
  OpenAIUnavailableError,
  openaiBlockReason,
} from '../../functions/core/errors';

/** Errors shaped as the official client makes them: status, code, type and the body's error. */
function apiError(status: number | undefined, code: string | null = null, type: string | null = null) {
  return Object.assign(new Error(`${status ?? ''} something`), {
    status,
    code,
    type,
    error: { message: 'something', code, type },
  });
}

describe('openaiBlockReason', () => {
  it('makes outages, timeouts and dropped connections the run waiting, not the request failing', () => {
    for (const status of [500, 502, 503, 504, 408, 409, 429])
      expect(openaiBlockReason(apiError(status))).toBe('openai_unavailable');
    expect(
      openaiBlockReason(Object.assign(new Error('Connection error.'), { name: 'APIConnectionError' })),
    ).toBe('openai_unavailable');
    expect(
      openaiBlockReason(
        Object.assign(new Error('Request timed out.'), { name: 'APIConnectionTimeoutError' }),
      ),
    ).toBe('openai_unavailable');
    const reset = new TypeError('fetch failed', {
      cause: Object.assign(new Error('socket'), { code: 'ECONNRESET' }),
    });
    expect(openaiBlockReason(reset)).toBe('openai_unavailable');
    expect(openaiBlockReason(Object.assign(new Error('getaddrinfo'), { code: 'ENOTFOUND' }))).toBe(
      'openai_unavailable',
    );
  });

  it('makes a refused key and an exhausted quota or billing limit the run waiting for a person', () => {
    expect(openaiBlockReason(apiError(401, 'invalid_api_key'))).toBe('key_refused');
    expect(openaiBlockReason(apiError(403))).toBe('key_refused');
    expect(openaiBlockReason(apiError(429, 'insufficient_quota', 'insufficient_quota'))).toBe(
      'quota_exhausted',
    );
    expect(openaiBlockReason(apiError(400, 'billing_hard_limit_reached'))).toBe('quota_exhausted');
    expect(openaiBlockReason(new OpenAIUnavailableError('x', 'key_refused', 401))).toBe('key_refused');
  });

  it("leaves a request's own refusals and other errors to the caller", () => {
    expect(openaiBlockReason(apiError(400, 'invalid_value'))).toBeNull();
    expect(openaiBlockReason(apiError(404))).toBeNull();
    expect(openaiBlockReason(new Error('a bug'))).toBeNull();
    expect(openaiBlockReason(new TypeError('x is not a function'))).toBeNull();
    expect(openaiBlockReason('a string')).toBeNull();
    expect(openaiBlockReason(null)).toBeNull();
  });
});

describe('blockedMessage', () => {
  it('says what blocks the run in words a person acts on', () => {
    expect(blockedMessage('key_refused', '401 Incorrect API key')).toBe(
      'OpenAI refused the API key: 401 Incorrect API key',
    );
    expect(blockedMessage('openai_unavailable', '503 overloaded')).toBe(
      'OpenAI is unavailable: 503 overloaded',
    );
    expect(blockedMessage('quota_exhausted', '429 quota')).toMatch(/quota or billing: 429 quota$/);
  });
});

describe('messageOf', () => {
  it('names whatever a hook threw, and never throws itself', () => {
    expect(messageOf(new Error('boom'))).toBe('boom');
    expect(messageOf('plain')).toBe('plain');
    expect(messageOf({ code: 7 })).toBe('{"code":7}');
    const cyclic: Record<string, unknown> = Object.create(null);
    cyclic.self = cyclic; // JSON refuses it, and String() has no toString to call
    expect(messageOf(cyclic)).toBe('a value that cannot be shown ([object Object])');
    const loud = {
      toJSON: () => {
        throw new Error('no');
      },
      toString: () => 'loud',
    };
    expect(messageOf(loud)).toBe('loud');
    expect(messageOf(undefined)).toBe('undefined');
    expect(messageOf(10n)).toBe('10');
  });
});
