import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type CollectInput,
  collectPart,
  customIdOf,
  parsePartLine,
  partLine,
  ShortDownloadError,
} from '../../functions/core/collect';
import { OpenAIUnavailableError } from '../../functions/core/errors';
import type { BatchErrorItem, BatchOutputItem } from '../../functions/core/items';
import { type CollectCursor, newPart, type Part } from '../../functions/core/run';
import { defineWork, type WorkConfig } from '../../functions/core/work';
import { chunksOf } from '../support/streams';

type Fate = 'ok' | 'fail' | 'expired' | 'missing' | 'twice';

const requestLine = (id: string) =>
  JSON.stringify({
    custom_id: id,
    method: 'POST',
    url: '/v1/chat/completions',
    body: { model: 'm', messages: [] },
  });
const ok = (id: string) =>
  JSON.stringify({
    id: `br_${id}`,
    custom_id: id,
    response: {
      status_code: 200,
      request_id: 'r',
      body: {
        model: 'm',
        choices: [{ message: { content: `answer ${id}` } }],
        usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 },
      },
    },
    error: null,
  });
const fail = (id: string) =>
  JSON.stringify({
    id: `br_${id}`,
    custom_id: id,
    response: {
      status_code: 400,
      request_id: 'r',
      body: { error: { message: 'bad', type: 'invalid_request_error', param: null, code: 'invalid_value' } },
    },
    error: null,
  });
const expired = (id: string) =>
  JSON.stringify({
    id: `br_${id}`,
    custom_id: id,
    response: null,
    error: {
      code: 'batch_expired',
      message: 'This request could not be executed before the completion window expired.',
    },
  });

interface Outcome {
  outputs: unknown[];
  errors: BatchErrorItem[];
  resent: { json: string; line: number; id: string }[];
  /** Times the part's request file was opened. */
  requestReads: number;
}

async function collect(
  fates: Fate[],
  options: {
    resubmit?: boolean;
    junk?: string[];
    failure?: Part['failure'];
    work?: Partial<WorkConfig>;
    from?: CollectCursor | null;
    shouldPause?: () => boolean;
    /** The lines file as prepare writes it now, each entry with its id (else dataset lines only, as before). */
    linesWithIds?: boolean;
    /** Entries left out at the end of the lines file (a file that lost them). */
    missingEntries?: number;
    /** What OpenAI counted for the batch (request_counts.completed and .failed). */
    counted?: { completed: number; failed: number };
    /** The output file as it came: cut after this many characters. */
    cutAt?: number;
    mayRedownload?: boolean;
  } = {},
) {
  const ids = fates.map((_, i) => `id${i}`);
  const outputLines: string[] = [];
  const errorLines: string[] = [];
  fates.forEach((fate, i) => {
    const id = ids[i] ?? '';
    if (fate === 'ok') outputLines.push(ok(id));
    if (fate === 'twice') outputLines.push(ok(id), ok(id));
    if (fate === 'fail') errorLines.push(fail(id));
    if (fate === 'expired') errorLines.push(expired(id));
  });
  outputLines.reverse(); // OpenAI's order is not the input's
  errorLines.push(...(options.junk ?? []));
  const sinks: Outcome = { outputs: [], errors: [], resent: [], requestReads: 0 };
  const entry = (id: string, i: number) => (options.linesWithIds ? partLine(100 + i, id) : String(100 + i));
  const part: Part = {
    ...newPart({ part: 3, generation: 0, model: 'm', requests: fates.length, bytes: 0, estimatedTokens: 0 }),
    batchId: 'batch_x',
    failure: options.failure ?? null,
    ...(options.counted ?? {}),
  };
  const input: CollectInput<Record<string, unknown>> = {
    work: defineWork({ name: 'c', ...options.work }),
    part,
    requests: () => {
      sinks.requestReads += 1;
      return chunksOf(ids.map(requestLine).join('\n'), 50);
    },
    lines: () =>
      chunksOf(
        ids
          .map(entry)
          .slice(0, ids.length - (options.missingEntries ?? 0))
          .join('\n'),
        3,
      ),
    outputFile: () => chunksOf(outputLines.join('\n').slice(0, options.cutAt), 70),
    errorFile: errorLines.length > 0 ? () => chunksOf(errorLines.join('\n'), 70) : null,
    outputs: { write: async (line) => void sinks.outputs.push(JSON.parse(line)) },
    errors: { write: async (line) => void sinks.errors.push(JSON.parse(line) as BatchErrorItem) },
    resubmit:
      options.resubmit === false
        ? null
        : { write: async (json, line, id) => void sinks.resent.push({ json, line, id }) },
    from: options.from ?? null,
    ...(options.shouldPause ? { shouldPause: options.shouldPause } : {}),
    ...(options.mayRedownload === undefined ? {} : { mayRedownload: options.mayRedownload }),
  };
  const result = await collectPart(input);
  return { result, ...sinks, ids };
}

describe('collectPart', () => {
  it('puts every request in exactly one place, whatever the result files hold', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.constantFrom<Fate>('ok', 'fail', 'expired', 'missing', 'twice'), { maxLength: 40 }),
        fc.boolean(),
        fc.array(
          fc.constantFrom(
            'not json',
            '{"custom_id":"stranger","response":null,"error":{"code":"x","message":"y"}}',
            '{"no":1}',
          ),
          { maxLength: 3 },
        ),
        fc.boolean(),
        async (fates, resubmit, junk, linesWithIds) => {
          const { result, outputs, errors, resent, ids, requestReads } = await collect(fates, {
            resubmit,
            junk,
            linesWithIds,
          });
          expect(result.outputs + result.errors + result.skippedOutputs + result.resubmitted).toBe(
            fates.length,
          );
          const placed = [
            ...(outputs as BatchOutputItem[]).map((o) => o.id),
            ...errors.map((e) => e.id),
            ...resent.map((r) => JSON.parse(r.json).custom_id),
          ];
          expect(placed.sort()).toEqual([...ids].sort());
          expect(result.outputs).toBe(fates.filter((f) => f === 'ok' || f === 'twice').length);
          if (!resubmit) expect(resent).toEqual([]);
          for (const r of resent) expect(r.id).toBe(JSON.parse(r.json).custom_id);
          // With the ids in the lines file, the request file is read only to send requests again.
          if (linesWithIds) expect(requestReads).toBe(resent.length > 0 ? 1 : 0);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('sends expired and missing requests again with their dataset lines, and reports what is left when resubmits are used up', async () => {
    const again = await collect(['ok', 'expired', 'missing', 'fail']);
    expect(again.resent.map((r) => [JSON.parse(r.json).custom_id, r.line])).toEqual([
      ['id1', 101],
      ['id2', 102],
    ]);
    expect(again.errors.map((e) => [e.id, e.code, e.line, e.statusCode])).toEqual([
      ['id3', 'invalid_value', 103, 400],
    ]);

    const final = await collect(['ok', 'expired', 'missing'], { resubmit: false });
    expect(final.errors.map((e) => [e.id, e.code, e.line])).toEqual([
      ['id1', 'batch_expired', 101],
      ['id2', 'missing_result', 102],
    ]);
    expect(final.errors[1]?.message).toMatch(
      /^OpenAI returned no result for this request in batch batch_x \(part 3\)/,
    );
  });

  it('reads result files again when they come back short (fewer results than OpenAI counted), rather than pay for their requests again', async () => {
    const fates: Fate[] = ['ok', 'ok', 'ok', 'fail'];
    const counted = { completed: 3, failed: 1 };
    // A page of a proxy in place of the output file, and a stream cut inside its second line.
    const short = [
      collect(fates, { counted, mayRedownload: true, junk: ['<html><body>Sign in</body></html>'], cutAt: 0 }),
      collect(fates, { counted, mayRedownload: true, cutAt: ok('id2').length + 20 }),
    ];
    for (const attempt of short) {
      const refused = await attempt.then(
        () => null,
        (caught: unknown) => caught,
      );
      expect(refused).toBeInstanceOf(ShortDownloadError);
      expect(refused).toBeInstanceOf(OpenAIUnavailableError);
      expect((refused as Error).message).toMatch(
        /^OpenAI is unavailable: the result files of batch batch_x came back short: \d results of the 4 OpenAI counted were read \(and 1 lines that were not results\)$/,
      );
    }
    // Read whole: no question. Read again enough times: taken as they are (sent again, as before).
    expect((await collect(fates, { counted, mayRedownload: true })).outputs).toHaveLength(3);
    const taken = await collect(fates, { counted, mayRedownload: false, cutAt: ok('id2').length + 20 });
    expect(taken.result.malformed).toBe(1);
    expect(taken.resent).toHaveLength(2);
    // A junk line beside every result OpenAI counted is not a short file.
    const whole = await collect(fates, { counted, mayRedownload: true, junk: ['not json'] });
    expect(whole.result).toMatchObject({ outputs: 3, malformed: 1 });
    // Cut at a line's end, or empty: no line that is not a result, and still short.
    const atLineEnd = await collect(fates, { counted, mayRedownload: true, cutAt: ok('id2').length }).then(
      () => null,
      (caught: unknown) => caught,
    );
    expect(atLineEnd).toBeInstanceOf(ShortDownloadError);
    await expect(collect(fates, { counted, mayRedownload: true, cutAt: 0 })).rejects.toBeInstanceOf(
      ShortDownloadError,
    );
  });

  it('joins results to dataset lines from the lines file alone when its entries name the ids', async () => {
    const final = await collect(['ok', 'expired', 'missing', 'fail'], {
      resubmit: false,
      linesWithIds: true,
    });
    expect(final.errors.map((e) => [e.id, e.code, e.line])).toEqual([
      ['id1', 'batch_expired', 101],
      ['id3', 'invalid_value', 103],
      ['id2', 'missing_result', 102],
    ]);
    expect(final.requestReads).toBe(0);
    // Sending requests again needs their JSON lines: the request file is read once, for them alone.
    const again = await collect(['ok', 'expired', 'missing'], { linesWithIds: true });
    expect(again.resent.map((r) => [r.id, r.line])).toEqual([
      ['id1', 101],
      ['id2', 102],
    ]);
    expect(again.requestReads).toBe(1);
    // A failed batch names each request's dataset line from the lines file too.
    const failed = await collect(['ok', 'ok'], {
      resubmit: false,
      linesWithIds: true,
      failure: [{ code: 'x', message: 'y', line: null }],
    });
    expect(failed.errors.map((e) => [e.id, e.line])).toEqual([
      ['id0', 100],
      ['id1', 101],
    ]);
    expect(failed.requestReads).toBe(0);
  });

  it('refuses a lines file with fewer entries than the part has requests, rather than lose them', async () => {
    await expect(
      collect(['ok', 'ok', 'missing'], { resubmit: false, linesWithIds: true, missingEntries: 1 }),
    ).rejects.toThrow('part 3: its lines file names 2 requests, where the part has 3');
  });

  it('reads any custom_id back from a lines file entry', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.nat(), (id, line) => {
        expect(parsePartLine(partLine(line, id))).toEqual({ line, id });
      }),
    );
    expect(parsePartLine('17')).toEqual({ line: 17, id: null });
  });

  it('joins outputs to their ids through the download hook, and keeps usage', async () => {
    const { outputs, result } = await collect(['ok', 'ok'], {
      work: { download: (item) => ({ id: item.id, text: item.content }) },
    });
    expect(outputs).toEqual([
      { id: 'id1', text: 'answer id1' },
      { id: 'id0', text: 'answer id0' },
    ]);
    expect(result.usage).toEqual({ inputTokens: 6, outputTokens: 4, cachedTokens: 0 });
  });

  it('turns a download hook that throws into an error for that request, and a null into a skip', async () => {
    const { outputs, errors, result } = await collect(['ok', 'ok', 'ok'], {
      work: {
        download: (item) => {
          if (item.id === 'id1') throw new Error('cannot map');
          return item.id === 'id2' ? null : item;
        },
      },
    });
    expect(outputs).toHaveLength(1);
    expect(errors.map((e) => [e.id, e.stage, e.code, e.message, e.line])).toEqual([
      ['id1', 'download', 'download_hook_failed', 'the download hook threw: cannot map', 101],
    ]);
    expect(result.skippedOutputs).toBe(1);
  });

  it('puts the requests of a batch OpenAI failed whole in errors, with the reason for their line, and resends the rest', async () => {
    const failure = [
      { code: 'invalid_json_line', message: 'This line is not parseable as valid JSON.', line: 2 },
    ];
    const { errors, resent, result } = await collect(['ok', 'ok', 'ok'], { failure });
    expect(errors.map((e) => [e.id, e.code, e.line])).toEqual([['id1', 'invalid_json_line', 101]]);
    expect(resent.map((r) => JSON.parse(r.json).custom_id)).toEqual(['id0', 'id2']);
    expect(result.outputs).toBe(0);

    const whole = await collect(['ok', 'ok'], {
      failure: [{ code: 'too_many_tasks', message: 'Too many.', line: null }],
    });
    expect(whole.errors.map((e) => e.code)).toEqual(['too_many_tasks', 'too_many_tasks']);
    expect(whole.errors[0]?.message).toBe('OpenAI failed batch batch_x (part 3): Too many.');
  });

  it('turns a download value JSON cannot hold (a BigInt, a cycle, a function) into an error for that request, and goes on', async () => {
    const { outputs, errors, result } = await collect(['ok', 'ok', 'ok', 'ok'], {
      work: {
        download: (item) => {
          if (item.id === 'id0') return { id: item.id, big: 10n };
          if (item.id === 'id1') {
            const cyclic: Record<string, unknown> = { id: item.id };
            cyclic.self = cyclic;
            return cyclic;
          }
          if (item.id === 'id2') return () => item.id;
          return { id: item.id };
        },
      },
    });
    expect(outputs).toEqual([{ id: 'id3' }]);
    expect(result).toMatchObject({ outputs: 1, errors: 3 });
    const byId = Object.fromEntries(errors.map((e) => [e.id, e]));
    expect(byId.id0).toMatchObject({
      stage: 'download',
      code: 'download_hook_failed',
      line: 100,
      message: 'the download hook returned a value JSON cannot hold: Do not know how to serialize a BigInt',
    });
    expect(byId.id1?.message).toMatch(
      /^the download hook returned a value JSON cannot hold: Converting circular/,
    );
    expect(byId.id2?.message).toBe(
      'the download hook returned a value JSON cannot hold: a function is not a JSON value',
    );
  });

  it('writes the plain error when the downloadError hook returns a value JSON cannot hold: no error is dropped', async () => {
    const { errors, result } = await collect(['fail', 'fail'], {
      resubmit: false,
      work: {
        downloadError: (item) => (item.id === 'id0' ? { id: item.id, big: 1n } : { mapped: item.id }),
      },
    });
    expect(result.errors).toBe(2);
    const lines = errors as unknown as Record<string, unknown>[];
    expect(lines).toContainEqual({ mapped: 'id1' });
    const plain = lines.find((e) => e.id === 'id0');
    expect(plain).toMatchObject({ code: 'invalid_value', line: 100, status: 'failed' });
    expect(plain?.message).toBe(
      'bad (the downloadError hook returned a value JSON cannot hold: Do not know how to serialize a BigInt)',
    );
  });

  it('collects in several calls, each going on where the last paused, to what one call gives; a crashed call run again with another pause leaves each line once', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.constantFrom<Fate>('ok', 'fail', 'expired', 'missing', 'twice'), { maxLength: 30 }),
        fc.boolean(),
        fc.boolean(),
        fc.array(fc.integer({ min: 0, max: 6 }), { minLength: 1, maxLength: 8 }),
        fc.boolean(),
        async (fates, resubmit, failed, budgets, linesWithIds) => {
          const failure = failed ? [{ code: 'invalid_json_line', message: 'Not JSON.', line: 2 }] : undefined;
          const common = { resubmit, linesWithIds, ...(failure ? { failure } : {}) };
          const whole = await collect(fates, common);
          // Each call's lines are kept by its chunk number: a call run again replaces its chunk, as in S3.
          const outputs = new Map<number, unknown[]>();
          const errors = new Map<number, BatchErrorItem[]>();
          let from: CollectCursor | null = null;
          let last: Awaited<ReturnType<typeof collect>> | null = null;
          for (let call = 0; call < 200; call++) {
            const budget = budgets[call % budgets.length] ?? 0;
            let asked = 0;
            const step = await collect(fates, { ...common, from, shouldPause: () => ++asked > budget });
            const chunk = from?.chunk ?? 0;
            outputs.set(chunk, step.outputs);
            errors.set(chunk, step.errors);
            // Every other call "crashes" before its cursor is saved: the same call runs again.
            if (call % 2 === 0 && step.result.paused) continue;
            last = step;
            if (!step.result.paused) break;
            from = step.result.paused;
          }
          expect(last?.result.paused).toBeNull();
          const ids = (items: unknown[]) => items.map((o) => (o as { id: string }).id).sort();
          expect(ids([...outputs.values()].flat())).toEqual(ids(whole.outputs));
          expect(ids([...errors.values()].flat())).toEqual(ids(whole.errors));
          expect(last?.resent).toEqual(whole.resent);
          expect({ ...last?.result, paused: null }).toEqual(whole.result);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('pauses only once it has handled a result, so that every call progresses', async () => {
    const first = await collect(['ok', 'ok', 'ok'], { shouldPause: () => true });
    expect(first.outputs).toHaveLength(1);
    expect(first.result.paused).toMatchObject({ chunk: 1, results: 1, outputs: 1, resubmit: true });
    const second = await collect(['ok', 'ok', 'ok'], {
      from: first.result.paused,
      shouldPause: () => true,
    });
    expect(second.outputs).toHaveLength(1);
    expect(second.result.paused).toMatchObject({ chunk: 2, results: 2, outputs: 2 });
  });
});

describe('customIdOf', () => {
  const bytes = (line: string) => Buffer.from(line);
  it('reads the custom_id of any line prepare writes, as parsing the whole line would', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.string({ unit: 'binary' }),
          fc.constantFrom('a"b', 'a\\', '\\"', '"', '}', ',"x":"'),
        ),
        fc.jsonValue(),
        (id, body) => {
          const line = JSON.stringify({ custom_id: id, method: 'POST', url: '/v1/embeddings', body });
          expect(customIdOf(bytes(line))).toBe(id);
        },
      ),
    );
  });

  it('parses lines written otherwise whole: other key order, spaces, an id that is not alone', () => {
    expect(customIdOf(bytes('{"method":"POST","custom_id":"x"}'))).toBe('x');
    expect(customIdOf(bytes('{ "custom_id": "x" }'))).toBe('x');
    expect(customIdOf(bytes('{"custom_id":"a"  ,"b":1}'))).toBe('a');
    expect(customIdOf(bytes('{"custom_id":"a\\u0062"}'))).toBe('ab');
    expect(customIdOf(bytes('{"custom_id":"only"}'))).toBe('only');
  });
});
