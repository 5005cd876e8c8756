import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type ChunkEvent, type PartLimits, type PartSummary, partsOf } from '../../functions/core/chunker';
import { InvariantError } from '../../functions/core/errors';
import type { PreparedRequest } from '../../functions/core/requests';
import { collect, fromArray } from '../support/streams';

const request = (customId: string, model: string, bytes: number, inputs = 1, line = 1): PreparedRequest => ({
  customId,
  model,
  line,
  json: customId,
  bytes,
  inputs,
  estimatedTokens: bytes,
});

const limitsArb = fc.record({
  maxRequestsPerBatch: fc.integer({ min: 1, max: 12 }),
  maxBytesPerBatch: fc.integer({ min: 50, max: 400 }),
  maxEmbeddingInputsPerBatch: fc.integer({ min: 5, max: 30 }),
});

const streamArb = (limits: PartLimits) =>
  fc
    .array(
      fc.record({
        model: fc.constantFrom('a', 'b', 'c'),
        bytes: fc.integer({ min: 1, max: limits.maxBytesPerBatch }),
        inputs: fc.integer({ min: 1, max: limits.maxEmbeddingInputsPerBatch }),
      }),
      { maxLength: 200 },
    )
    .map((specs) => specs.map((s, i) => request(`r${i}`, s.model, s.bytes, s.inputs, i + 1)));

interface Part {
  summary: PartSummary | undefined;
  requests: PreparedRequest[];
}

function assemble(events: ChunkEvent[]): Map<number, Part> {
  const parts = new Map<number, Part>();
  for (const event of events) {
    const number = event.kind === 'request' ? event.part : event.summary.part;
    const part = parts.get(number) ?? { summary: undefined, requests: [] };
    expect(part.summary, `part ${number} got an event after it closed`).toBeUndefined();
    if (event.kind === 'request') part.requests.push(event.request);
    else part.summary = event.summary;
    parts.set(number, part);
  }
  return parts;
}

describe('partsOf', () => {
  it('keeps every limit, one model a part, and every request exactly once in order', async () => {
    await fc.assert(
      fc.asyncProperty(
        limitsArb.chain((limits) => fc.tuple(fc.constant(limits), streamArb(limits), fc.nat(5))),
        async ([limits, requests, firstPart]) => {
          const parts = assemble(await collect(partsOf(fromArray(requests), limits, firstPart)));
          const numbers = [...parts.keys()].sort((a, b) => a - b);
          expect(numbers).toEqual(numbers.map((_, i) => firstPart + i));
          for (const { summary, requests: inPart } of parts.values()) {
            if (!summary) throw new Error('a part never closed');
            expect(inPart.length).toBeGreaterThan(0);
            expect(inPart.length).toBeLessThanOrEqual(limits.maxRequestsPerBatch);
            const bytes = inPart.reduce((n, r) => n + r.bytes, 0);
            const inputs = inPart.reduce((n, r) => n + r.inputs, 0);
            expect(bytes).toBeLessThanOrEqual(limits.maxBytesPerBatch);
            expect(inputs).toBeLessThanOrEqual(limits.maxEmbeddingInputsPerBatch);
            expect(new Set(inPart.map((r) => r.model))).toEqual(new Set([summary.model]));
            expect(summary).toMatchObject({
              requests: inPart.length,
              bytes,
              inputs,
              estimatedTokens: bytes,
              firstLine: inPart[0]?.line,
              lastLine: inPart.at(-1)?.line,
            });
          }
          // Nothing dropped or duplicated, and each model's requests keep their order across its parts.
          const placed = numbers.flatMap((n) => parts.get(n)?.requests ?? []);
          expect(placed.map((r) => r.customId).sort()).toEqual(requests.map((r) => r.customId).sort());
          for (const model of ['a', 'b', 'c']) {
            expect(placed.filter((r) => r.model === model)).toEqual(
              requests.filter((r) => r.model === model),
            );
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('keeps one part open per model so interleaved models do not fragment', async () => {
    const limits = { maxRequestsPerBatch: 10, maxBytesPerBatch: 1000, maxEmbeddingInputsPerBatch: 10 };
    const requests = Array.from({ length: 10 }, (_, i) => request(`r${i}`, i % 2 ? 'b' : 'a', 10));
    const events = await collect(partsOf(fromArray(requests), limits));
    const closes = events.flatMap((e) =>
      e.kind === 'close' ? [[e.summary.part, e.summary.model, e.summary.requests]] : [],
    );
    expect(closes).toEqual([
      [0, 'a', 5],
      [1, 'b', 5],
    ]);
  });

  it('closes a part exactly when the next request would break a limit', async () => {
    const limits = { maxRequestsPerBatch: 3, maxBytesPerBatch: 100, maxEmbeddingInputsPerBatch: 100 };
    const requests = [40, 60, 1, 1, 1, 1].map((bytes, i) => request(`r${i}`, 'a', bytes));
    const events = await collect(partsOf(fromArray(requests), limits));
    const sizes = events.flatMap((e) => (e.kind === 'close' ? [[e.summary.requests, e.summary.bytes]] : []));
    expect(sizes).toEqual([
      [2, 100],
      [3, 3],
      [1, 1],
    ]);
  });

  it('refuses a request that fits no part, since the builder must have caught it', async () => {
    const limits = { maxRequestsPerBatch: 3, maxBytesPerBatch: 100, maxEmbeddingInputsPerBatch: 100 };
    await expect(collect(partsOf(fromArray([request('big', 'a', 101)]), limits))).rejects.toThrow(
      InvariantError,
    );
  });
});
