import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { partsOf } from '../../functions/core/chunker';
import { readDataset } from '../../functions/core/dataset';
import { buildRequests, type IdClaims } from '../../functions/core/requests';
import { defineWork } from '../../functions/core/work';
import { estimate, partitionsOfFile } from '../../local/estimate';
import { UnstableUploadError } from '../../local/estimate-ids';
import { chunksOf } from '../support/streams';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-estimate-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Ids claimed over the whole dataset in a Set: what estimate's id files must come to, for small data. */
class SetClaims implements IdClaims {
  private readonly seen = new Map<string, number>();
  claim(id: string, line: number): number {
    const first = this.seen.get(id);
    if (first !== undefined) return first;
    this.seen.set(id, line);
    return 0;
  }
}

const work = defineWork<{ id: number; twice?: boolean; model: string; text: string }>({
  name: 'estimate-ids',
  endpoint: '/v1/chat/completions',
  maxRequestsPerBatch: 3,
  upload: (record) => {
    const ask = { model: record.model, messages: [{ role: 'user', content: record.text }] };
    // A record may give two requests: the same id twice (refused on its line) or two ids.
    if (record.twice === true)
      return [
        { id: `r${record.id}`, ...ask },
        { id: `r${record.id}`, ...ask },
      ];
    if (record.twice === false)
      return [
        { id: `r${record.id}`, ...ask },
        { id: `s${record.id}`, ...ask },
      ];
    return { id: `r${record.id}`, ...ask };
  },
});

describe('the id partitions of a local dataset', () => {
  it('count a gzip file as ten times its size, as Register counts a gzip object', async () => {
    // 7 MiB that do not compress (stored): as JSONL a gzip file holds about ten times that, 2 partitions.
    const bytes = randomBytes(7 * 1024 * 1024);
    const plain = join(dir, 'partitions.jsonl');
    const packed = join(dir, 'partitions.jsonl.gz');
    writeFileSync(plain, bytes);
    writeFileSync(packed, gzipSync(bytes, { level: 0 }));
    expect(await partitionsOfFile(plain)).toBe(1);
    expect(await partitionsOfFile(packed)).toBe(2);
  });
});

describe('estimate', () => {
  it('counts what a run would send, with ids used on several lines found exactly across id files and partitions', async () => {
    const record = fc.record({
      id: fc.integer({ min: 0, max: 25 }),
      twice: fc.option(fc.boolean(), { nil: undefined }),
      model: fc.constantFrom('gpt-4o-mini', 'gpt-4.1-mini'),
      text: fc.string({ maxLength: 12 }),
    });
    await fc.assert(
      fc.asyncProperty(
        fc.array(record, { maxLength: 60 }),
        fc.integer({ min: 1, max: 9 }),
        fc.integer({ min: 1, max: 7 }),
        async (records, entriesHeld, partitions) => {
          const data = records.map((r) => JSON.stringify(r)).join('\n');
          const file = join(dir, 'data.jsonl');
          writeFileSync(file, data);
          const figures = await estimate(work, file, { entriesHeld, partitions });
          // The reference: every id held in memory, the requests chunked as they come.
          let refused = 0;
          const models = new Map<string, number>();
          async function* sent() {
            const lines = readDataset(chunksOf(data, 7), { maxRecordBytes: work.settings.maxRecordBytes });
            for await (const event of buildRequests(lines, work, new SetClaims())) {
              if (event.kind === 'error') refused += 1;
              if (event.kind !== 'request') continue;
              models.set(event.request.model, (models.get(event.request.model) ?? 0) + 1);
              yield event.request;
            }
          }
          let parts = 0;
          for await (const event of partsOf(sent(), work.settings)) if (event.kind === 'close') parts += 1;
          expect(figures.records).toBe(records.length);
          expect(figures.refused).toBe(refused);
          expect(figures.parts).toBe(parts);
          expect(figures.requests).toBe([...models.values()].reduce((a, b) => a + b, 0));
          expect(Object.fromEntries(figures.byModel.map((m) => [m.model, m.requests]))).toEqual(
            Object.fromEntries(models),
          );
        },
      ),
      { numRuns: 60 },
    );
  });

  it('keeps the first use of an id and counts every later one as refused, whatever line it is on', async () => {
    const file = join(dir, 'reused.jsonl');
    const lines = [
      { id: 1, model: 'gpt-4o-mini', text: 'a' },
      { id: 2, model: 'gpt-4o-mini', text: 'b' },
      { id: 1, model: 'gpt-4.1-mini', text: 'a later use' },
      { id: 3, twice: true, model: 'gpt-4o-mini', text: 'c' },
      { id: 2, model: 'gpt-4.1-mini', text: 'again' },
    ];
    writeFileSync(file, lines.map((l) => JSON.stringify(l)).join('\n'));
    const figures = await estimate(work, file, { entriesHeld: 1, partitions: 2 });
    expect(figures).toMatchObject({ records: 5, requests: 3, refused: 3, parts: 1 });
    // The later uses were of another model: only the first uses count.
    expect(figures.byModel.map((m) => [m.model, m.requests])).toEqual([['gpt-4o-mini', 3]]);
  });

  it('refuses to give figures when the upload hook gives other requests on the second read', async () => {
    const file = join(dir, 'unstable.jsonl');
    writeFileSync(file, ['{"n":1}', '{"n":2}', '{"n":3}'].join('\n'));
    let calls = 0;
    // The first read gives one id on every line (so a second read is made), the second read others.
    const unstable = defineWork({
      name: 'unstable',
      model: 'gpt-4o-mini',
      upload: () => {
        calls += 1;
        return { id: calls <= 3 ? 'same' : `other-${calls}`, messages: [{ role: 'user', content: 'x' }] };
      },
    });
    await expect(estimate(unstable, file, { entriesHeld: 2, partitions: 3 })).rejects.toThrow(
      UnstableUploadError,
    );
    expect(calls).toBeGreaterThan(3); // a second read was made, and told apart from the first
  });
});
