import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { addCounts, reconcile } from '../../functions/core/accounting';
import type { PartSummary } from '../../functions/core/chunker';
import { IdRegistry } from '../../functions/core/ids';
import type { BatchErrorItem } from '../../functions/core/items';
import {
  LineIds,
  type PartSink,
  type PrepareResult,
  type PrepareStart,
  prepareDataset,
  type RecordSink,
} from '../../functions/core/prepare';
import type { IdClaims, PreparedRequest } from '../../functions/core/requests';
import { defineWork, type Work } from '../../functions/core/work';
import { chunksOf } from '../support/streams';

/** Part files and error lines kept in arrays: test-sized datasets only. */
class MemorySinks implements PartSink, RecordSink {
  readonly parts = new Map<number, string[]>();
  readonly closed: PartSummary[] = [];
  readonly records: unknown[] = [];
  async write(partOrLine: number | string, request?: PreparedRequest): Promise<void> {
    if (typeof partOrLine === 'number' && request !== undefined) {
      const lines = this.parts.get(partOrLine) ?? [];
      lines.push(request.json);
      this.parts.set(partOrLine, lines);
    } else {
      this.records.push(JSON.parse(String(partOrLine)));
    }
  }
  async close(summary: PartSummary): Promise<void> {
    expect(this.parts.get(summary.part)?.length).toBe(summary.requests);
    this.closed.push(summary);
  }
  customIds(): string[] {
    return [...this.parts.values()].flat().map((line) => JSON.parse(line).custom_id);
  }
}

type Mode = 'one' | 'many' | 'skip' | 'throw' | 'bad';

const testWork = (overrides: Record<string, unknown> = {}): Work =>
  defineWork({
    name: 'prop',
    model: 'gpt-4o-mini',
    maxRequestsPerBatch: 7,
    ...overrides,
    upload: (record, { line }) => {
      const mode = record.mode as Mode;
      const ask = { messages: [{ role: 'user', content: String(record.text) }], user: `line-${line}` };
      if (mode === 'skip') return null;
      if (mode === 'throw') throw new Error('hook says no');
      if (mode === 'bad') return { id: String(record.id) };
      if (mode === 'many') return [0, 1, 2].map((i) => ({ id: `${record.id}-${i}`, ...ask }));
      return { id: String(record.id), model: record.model as string, ...ask };
    },
  });

const lineArb = fc.oneof(
  {
    weight: 8,
    arbitrary: fc
      .record({
        id: fc.integer({ min: 1, max: 40 }),
        mode: fc.constantFrom<Mode>('one', 'one', 'one', 'many', 'skip', 'throw', 'bad'),
        model: fc.constantFrom('m1', 'm2'),
        text: fc.string({ maxLength: 20 }),
      })
      .map((r) => JSON.stringify(r)),
  },
  { weight: 1, arbitrary: fc.constantFrom('{broken', '[1]', '', '   ', '42', 'x'.repeat(300)) },
);

async function prepare(
  data: string | Uint8Array,
  work: Work,
  ids: IdClaims = new IdRegistry(),
  start: PrepareStart = {},
  pauseAfter = Number.POSITIVE_INFINITY,
) {
  const sinks = new MemorySinks();
  let seen = 0;
  const result = await prepareDataset({
    source: chunksOf(data, 13),
    work,
    ids,
    parts: sinks,
    errors: sinks,
    start,
    shouldPause: () => seen++ >= pauseAfter,
  });
  return { result, sinks };
}

/** Prepares `count` one-request records into `sink` (parts of 5 requests): the step's promise. */
function prepareInto(sink: PartSink & RecordSink, count: number): Promise<PrepareResult> {
  const lines = Array.from({ length: count }, (_, i) => JSON.stringify({ id: i, mode: 'one', text: 't' }));
  return prepareDataset({
    source: chunksOf(lines.join('\n'), 13),
    work: testWork({ maxRequestsPerBatch: 5 }),
    ids: new IdRegistry(),
    parts: sink,
    errors: sink,
  });
}

describe('prepareDataset', () => {
  it('puts every record and request in exactly one place: a part, errors, or skipped', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(lineArb, { maxLength: 60 }), async (lines) => {
        const { result, sinks } = await prepare(lines.join('\n'), testWork({ maxRecordBytes: 200 }));
        const { counts } = result;
        expect(result.done).toBe(true);
        expect(counts.records).toBe(lines.filter((l) => l.trim() !== '').length);
        expect(counts.errors).toBe(sinks.records.length);
        expect(counts.submittedRequests).toBe(sinks.customIds().length);
        expect(counts.parts).toBe(sinks.closed.length);
        // custom_ids are unique across the whole run, not only within a part.
        expect(new Set(sinks.customIds()).size).toBe(sinks.customIds().length);
        // Every line that is not blank or skipped shows up in a part or in errors, under its own number.
        const placed = new Set<number>((sinks.records as BatchErrorItem[]).map((e) => e.line ?? -1));
        for (const part of sinks.parts.values()) {
          for (const l of part) placed.add(Number(JSON.parse(l).body.user.slice('line-'.length)));
        }
        const expected = lines.flatMap((l, i) =>
          l.trim() === '' || l.includes('"mode":"skip"') ? [] : [i + 1],
        );
        expect([...placed].sort((a, b) => a - b)).toEqual(expected);
        expect(counts.skippedRecords).toBe(lines.filter((l) => l.includes('"mode":"skip"')).length);
        // Once OpenAI answers every submitted request, the run balances.
        const settled = {
          ...counts,
          settledRequests: counts.submittedRequests,
          outputs: counts.submittedRequests,
        };
        expect(reconcile(settled)).toMatchObject({ balanced: true });
        // ...and a single lost output would be caught.
        if (counts.submittedRequests > 0)
          expect(reconcile({ ...settled, outputs: settled.outputs - 1 }).balanced).toBe(false);
      }),
      { numRuns: 200 },
    );
  });

  it("closes a part while the next one fills, and returns only once every part's close is done", async () => {
    const events: string[] = [];
    const pending: (() => void)[] = [];
    const sink: PartSink & RecordSink = {
      write(part: number | string) {
        if (typeof part === 'number' && events.at(-1) !== `write ${part}`) events.push(`write ${part}`);
        return Promise.resolve();
      },
      close(summary: PartSummary) {
        events.push(`close ${summary.part}`);
        // Part 0's close is held until part 1 has been written to: a prepare that waited would never get there.
        return new Promise<void>((resolve) =>
          pending.push(() => {
            events.push(`closed ${summary.part}`);
            resolve();
          }),
        );
      },
    };
    const done = prepareInto(sink, 10);
    let returned = false;
    void done.then(() => {
      returned = true;
    });
    while (pending.length < 1 || !events.includes('write 1')) await new Promise((r) => setImmediate(r));
    expect(events).toEqual(['write 0', 'close 0', 'write 1']);
    pending.shift()?.();
    while (pending.length < 1) await new Promise((r) => setImmediate(r));
    expect(returned).toBe(false); // part 1's close is still held
    pending.shift()?.();
    const result = await done;
    expect(events).toEqual(['write 0', 'close 0', 'write 1', 'closed 0', 'close 1', 'closed 1']);
    expect(result.parts.map((p) => p.requests)).toEqual([5, 5]);
  });

  it('fails the step with a part close that failed while the next part filled', async () => {
    let closes = 0;
    const sink: PartSink & RecordSink = {
      write: () => Promise.resolve(),
      close: () => (closes++ === 0 ? Promise.reject(new Error('S3 refused the part')) : Promise.resolve()),
    };
    await expect(prepareInto(sink, 12)).rejects.toThrow('S3 refused the part');
  });

  it('fails a step only once the part close running beside the failure has ended', async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let closeEnded = false;
    const sink: PartSink & RecordSink = {
      write: (part: number | string) =>
        part === 1 ? Promise.reject(new Error('S3 refused a write')) : Promise.resolve(),
      close: () =>
        held.then(() => {
          closeEnded = true;
        }),
    };
    let settled = false;
    const step = prepareInto(sink, 8).finally(() => {
      settled = true;
    });
    step.catch(() => {});
    for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false); // part 1's write failed, part 0's close still runs
    release();
    await expect(step).rejects.toThrow('S3 refused a write');
    expect(closeEnded).toBe(true);
  });

  it('takes an async upload hook, a thenable and a rejected promise as it takes a plain hook', async () => {
    const plain = testWork({ maxRecordBytes: 200 });
    const async: Work = { ...plain, upload: async (record, context) => plain.upload(record, context) };
    const thenable: Work = {
      ...plain,
      upload: (record, context) =>
        ({
          // biome-ignore lint/suspicious/noThenProperty: a thenable is what this test gives the hook
          then(resolve: (value: unknown) => void, reject: (error: unknown) => void) {
            try {
              resolve(plain.upload(record, context));
            } catch (caught) {
              reject(caught);
            }
          },
        }) as unknown as ReturnType<Work['upload']>,
    };
    await fc.assert(
      fc.asyncProperty(fc.array(lineArb, { maxLength: 30 }), async (lines) => {
        const data = lines.join('\n');
        const expected = await prepare(data, plain);
        for (const work of [async, thenable]) {
          const { result, sinks } = await prepare(data, work);
          expect(result).toEqual(expected.result);
          expect(sinks).toEqual(expected.sinks);
        }
      }),
      { numRuns: 100 },
    );
  });

  it('writes errors through the downloadError hook, and keeps the error when the hook throws', async () => {
    const work = defineWork({
      name: 'err',
      model: 'm',
      downloadError: (item) => {
        if (item.line === 2) throw new Error('mapper broke');
        return { failedLine: item.line, why: item.code };
      },
    });
    const { sinks } = await prepare('{oops\n[]\n', work);
    expect(sinks.records).toEqual([
      { failedLine: 1, why: 'invalid_json' },
      expect.objectContaining({
        line: 2,
        code: 'not_an_object',
        message: 'line 2 is an array, not a JSON object (the downloadError hook threw: mapper broke)',
      }),
    ]);
  });

  it('writes the plain error when the downloadError hook returns a value JSON cannot hold', async () => {
    const work = defineWork({
      name: 'err',
      model: 'm',
      downloadError: (item) => {
        if (item.line === 1) return { line: item.line, big: 2n };
        const cyclic: Record<string, unknown> = { line: item.line };
        cyclic.self = cyclic;
        return cyclic;
      },
    });
    const { sinks, result } = await prepare('{oops\n[]\n', work);
    expect(result.counts.errors).toBe(2);
    expect(sinks.records).toEqual([
      expect.objectContaining({
        line: 1,
        code: 'invalid_json',
        message: expect.stringMatching(
          /\(the downloadError hook returned a value JSON cannot hold: Do not know how to serialize a BigInt\)$/,
        ),
      }),
      expect.objectContaining({
        line: 2,
        code: 'not_an_object',
        message: expect.stringMatching(
          /\(the downloadError hook returned a value JSON cannot hold: Converting circular/,
        ),
      }),
    ]);
  });

  it.each([
    ['plain', false],
    ['gzip', true],
  ])('resumes a %s dataset after a pause and ends with what one uninterrupted step gives', async (_, gz) => {
    const lines = Array.from({ length: 50 }, (_, i) =>
      i % 9 === 4
        ? '{bad'
        : JSON.stringify({
            id: i % 23,
            mode: i % 7 === 3 ? 'many' : 'one',
            model: i % 2 ? 'm1' : 'm2',
            text: `t${i}`,
          }),
    );
    const text = `${lines.join('\n')}\n`;
    const data = gz ? gzipSync(Buffer.from(text)) : Buffer.from(text);
    const work = testWork();
    const whole = await prepare(data, work);

    let ids = new IdRegistry();
    let start: PrepareStart = {};
    const steps: PrepareResult[] = [];
    const customIds: string[] = [];
    const errors: unknown[] = [];
    for (let step = 0; step < 20; step++) {
      const source = !gz && start.position ? data.subarray(start.position.offset) : data;
      const { result, sinks } = await prepare(source, work, ids, start, 8);
      steps.push(result);
      customIds.push(...sinks.customIds());
      errors.push(...sinks.records);
      if (result.done) break;
      ids = IdRegistry.fromBytes(ids.toBytes()); // as a new Lambda would load it
      const firstPart = (start.firstPart ?? 0) + result.parts.length;
      start = result.gzip
        ? { skipLines: result.next.line - 1, firstPart }
        : { position: result.next, firstPart };
    }
    expect(steps.length).toBeGreaterThan(3);
    expect(steps.at(-1)?.done).toBe(true);
    expect([...customIds].sort()).toEqual(whole.sinks.customIds().sort());
    expect(errors).toEqual(whole.sinks.records);
    const total = steps.map((s) => s.counts).reduce(addCounts);
    expect({ ...total, parts: 0 }).toEqual({ ...whole.result.counts, parts: 0 });
    const partNumbers = steps.flatMap((s) => s.parts.map((p) => p.part));
    expect(partNumbers).toEqual(partNumbers.map((_, i) => i));
  });

  it('refuses an id given twice by one line on the spot, and leaves ids of different lines to Settle', async () => {
    const work = defineWork({
      name: 'lines',
      model: 'm',
      upload: (record) =>
        (record.ids as string[]).map((id) => ({ id, messages: [{ role: 'user', content: 'q' }] })),
    });
    const data = ['{"ids":["a","b","a"]}', '{"ids":["a"]}', '{"ids":["c","c","c"]}'].join('\n');
    const { result, sinks } = await prepare(data, work, new LineIds());
    expect(sinks.customIds()).toEqual(['a', 'b', 'a', 'c']);
    expect((sinks.records as BatchErrorItem[]).map((e) => [e.line, e.code, e.id])).toEqual([
      [1, 'duplicate_id', 'a'],
      [3, 'duplicate_id', 'c'],
      [3, 'duplicate_id', 'c'],
    ]);
    expect(result.counts).toMatchObject({ records: 3, submittedRequests: 4, refusedRequests: 3, errors: 3 });
  });

  it('holds the ids of one line only', () => {
    const ids = new LineIds();
    expect(ids.claim('x', 1)).toBe(0);
    expect(ids.claim('x', 1)).toBe(1);
    expect(ids.claim('x', 2)).toBe(0);
    expect(ids.claim('y', 2)).toBe(0);
    expect(ids.claim('x', 1)).toBe(0); // a line read again (a step run again) starts afresh
  });
});

describe('prepareDataset over the objects of a pack', () => {
  /** Objects `a` (3 records) and `b` (4, the first after 2 lines it passes over), as a pack's sources. */
  const sources = (skipLines: number) => [
    {
      source: chunksOf(['{"id":"a1"}', '{"id":"a2"}', '{"id":"a3"}'].join('\n'), 5),
      object: 'a',
      position: { line: 1, offset: 0 },
    },
    {
      source: chunksOf(['{"id":"b1"}', '', '{"id":"b3"}', '{"id":"b4"}', '{"id":"b5"}'].join('\n'), 7),
      object: 'b',
      position: { line: 1, offset: 0 },
      skipLines,
    },
  ];

  it('numbers lines across the pack in parts and per object for hooks, and passes over lines to resume', async () => {
    const placed: { id: string; line: number }[] = [];
    const hooked: number[] = [];
    const parts: PartSink = {
      write: (_part, request) => {
        placed.push({ id: request.customId, line: request.line });
        return undefined;
      },
      close: async () => {},
    };
    const errors: RecordSink = { write: async () => {} };
    const result = await prepareDataset({
      work: defineWork({
        name: 'pack',
        model: 'gpt-4o-mini',
        upload: (record, { line }) => {
          hooked.push(line);
          return { id: String(record.id), messages: [{ role: 'user', content: 'q' }] };
        },
      }),
      ids: new LineIds(),
      parts,
      errors,
      sources: sources(2),
      start: { lineBase: 10 },
    });
    expect(result.done).toBe(true);
    // b passes over its lines 1 and 2; its lines 3 to 5 follow a's 3 lines, after the pack's 10 before.
    expect(placed).toEqual([
      { id: 'a1', line: 11 },
      { id: 'a2', line: 12 },
      { id: 'a3', line: 13 },
      { id: 'b3', line: 16 },
      { id: 'b4', line: 17 },
      { id: 'b5', line: 18 },
    ]);
    expect(hooked).toEqual([1, 2, 3, 3, 4, 5]);
    expect(result.finished).toEqual([3, 5]);
  });

  it('resumes past the lines it passed over when it stops before the first record after them', async () => {
    let asked = 0;
    const sinks = new MemorySinks();
    const result = await prepareDataset({
      work: testWork(),
      ids: new LineIds(),
      parts: sinks,
      errors: sinks,
      sources: sources(2).slice(1),
      // The step stops before its first record: where the next one resumes must not go back to line 1.
      shouldPause: () => asked++ >= 0,
    });
    expect(result).toMatchObject({ done: false, next: { line: 3 }, finished: [] });
  });
});
