import { GetObjectCommand, ListObjectsCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { MAX_REDOWNLOADS, ShortDownloadError } from '../../functions/core/collect';
import type { BatchApi } from '../../functions/core/ports';
import { type Part, type Run, runKeys } from '../../functions/core/run';
import { objectListCodec, planCodec, type Shard } from '../../functions/core/shards';
import { defineWork, type Work, type WorkConfig } from '../../functions/core/work';
import { collect } from '../../functions/steps/collect-part';
import type { StepDeps } from '../../functions/steps/deps';
import { StoredParts, writeAll } from '../../functions/steps/storage';
import { localDeps, RecordingNotifier } from '../../local/runner';
import { chatLine } from '../support/emulator';
import { localEnvironment } from '../support/local-environment';
import { partFixture, runFixture } from '../support/runs';

/**
 * Collecting one part through the real stand-ins: a slow download hook makes it take several steps
 * within the time budget (on a manual clock the hook moves), and a collect that crashed and ran again
 * leaves each output and error line once.
 */

const shared = localEnvironment('openai-batch-collect-', {
  kind: 'emulator',
  options: { validationMs: 10, requestsPerSecond: 100_000, finalizingMs: 10, tickMs: 5 },
});

/** A manual clock: only what the test (its hooks) does moves it. */
class Clock {
  ms = 1_000_000;
  readonly now = () => this.ms;
}

function depsFor(work: Work, clock: Clock, budgetMs = 240_000): StepDeps<Record<string, unknown>> {
  return { ...localDeps(shared.env, work, { now: clock.now, budgetMs }, new RecordingNotifier()) };
}

/** A run whose one part holds `ids` as a batch OpenAI (the emulator) completed: ready to collect. */
async function collectingPart(
  deps: StepDeps<Record<string, unknown>>,
  runId: string,
  ids: string[],
): Promise<{ run: Run; part: Part; api: BatchApi }> {
  const run = { ...runFixture(runId), status: 'running' as const, prepared: true };
  await deps.runs.createRun(run, false);
  const files = new StoredParts(deps.blobs, runId);
  for (const [i, id] of ids.entries()) await files.writeRaw(0, chatLine(id), i + 1, id);
  await files.close({ part: 0 });
  const api = await deps.openai();
  const fileId = await api.uploadFile(
    `${runId}.jsonl`,
    deps.blobs.read(`runs/${runId}/requests/part-00000.jsonl`),
  );
  let batch = await api.createBatch({ fileId, endpoint: '/v1/chat/completions', metadata: {} });
  while (batch.status !== 'completed') {
    await new Promise((resolve) => setTimeout(resolve, 20));
    batch = await api.getBatch(batch.id);
  }
  const part: Part = {
    ...partFixture({ requests: ids.length }),
    status: 'collecting',
    fileId,
    batchId: batch.id,
    batchStatus: 'completed',
    outputFileId: batch.outputFileId,
    errorFileId: batch.errorFileId,
    childPart: 1,
  };
  await deps.runs.addParts(runId, [part]);
  const [stored] = await deps.runs.listParts(runId);
  if (!stored) throw new Error('no part');
  return { run: (await deps.runs.getRun(runId)) ?? run, part: stored, api };
}

/** Every line under a prefix, with the file it is in. */
async function linesUnder(prefix: string): Promise<{ key: string; value: Record<string, unknown> }[]> {
  const listed = await shared.env.s3.client.send(
    new ListObjectsCommand({ Bucket: shared.env.s3.bucket, Prefix: prefix }),
  );
  const found: { key: string; value: Record<string, unknown> }[] = [];
  for (const object of listed.Contents ?? []) {
    const key = object.Key ?? '';
    const body = await shared.env.s3.client.send(
      new GetObjectCommand({ Bucket: shared.env.s3.bucket, Key: key }),
    );
    for (const line of ((await body.Body?.transformToString()) ?? '').split('\n'))
      if (line) found.push({ key, value: JSON.parse(line) });
  }
  return found;
}

const idsOf = (lines: { value: Record<string, unknown> }[]) => lines.map((l) => String(l.value.id)).sort();

describe('collecting a part', () => {
  it('takes several steps within the budget when the download hook is slow, each output once', async () => {
    const clock = new Clock();
    const HOOK_MS = 5;
    const BUDGET_MS = 1_000; // 200 results a step at 5 ms each
    const work = defineWork({
      name: 'slow',
      model: 'gpt-4o-mini',
      download: async (item) => {
        clock.ms += HOOK_MS; // the hook's time, on the manual clock
        return { id: item.id };
      },
    } satisfies WorkConfig);
    const deps = depsFor(work, clock, BUDGET_MS);
    const ids = Array.from({ length: 1_000 }, (_, i) => `s${i}`);
    const { run, part, api } = await collectingPart(deps, 'slow', ids);

    let current = part;
    const spent: number[] = [];
    for (let step = 0; step < 20 && current.status !== 'done'; step++) {
      // What Tick does: one budget a step, asked before each result once one is handled.
      const started = deps.now();
      await collect(deps, api, run, current, (p) => deps.runs.putPart(run.runId, p), {
        shouldPause: () => deps.now() - started > deps.budgetMs,
      });
      spent.push(deps.now() - started);
      const [saved] = await deps.runs.listParts(run.runId);
      if (!saved) throw new Error('no part');
      current = saved;
    }
    expect(current).toMatchObject({ status: 'done', outputs: 1_000, errors: 0, collected: null });
    expect(spent.length).toBeGreaterThanOrEqual(5);
    // No step runs past its budget by more than one hook call.
    expect(Math.max(...spent)).toBeLessThanOrEqual(BUDGET_MS + HOOK_MS);
    const outputs = await linesUnder('runs/slow/outputs/');
    expect(idsOf(outputs)).toEqual([...ids].sort());
    expect(new Set(outputs.map((o) => o.key)).size).toBe(spent.length);
  });

  it('leaves each line once when a collect that crashed runs again and finds what the crashed one did not', async () => {
    const clock = new Clock();
    let flaky = true; // the hook's lookup fails for some records during the first attempt only
    const work = defineWork({
      name: 'flaky',
      model: 'gpt-4o-mini',
      download: (item) => {
        clock.ms += 10;
        if (flaky && item.id.endsWith('3')) throw new Error('lookup timed out');
        return { id: item.id };
      },
    } satisfies WorkConfig);
    const deps = depsFor(work, clock, 100);
    const ids = Array.from({ length: 40 }, (_, i) => `f${i}`);
    const { run, part, api } = await collectingPart(deps, 'flaky', ids);

    // The first attempt collects all of it (no budget asked), then dies before it records the part.
    const crash = async () => {
      throw new Error('Lambda timed out');
    };
    await expect(collect(deps, api, run, part, crash)).rejects.toThrow('Lambda timed out');
    expect(idsOf(await linesUnder('runs/flaky/errors/'))).toEqual(['f13', 'f23', 'f3', 'f33']);

    // Run again: the hook works now, and the budget is smaller, so collecting takes several steps.
    flaky = false;
    let current = part;
    for (let step = 0; step < 20 && current.status !== 'done'; step++) {
      const started = deps.now();
      await collect(deps, api, run, current, (p) => deps.runs.putPart(run.runId, p), {
        shouldPause: () => deps.now() - started > deps.budgetMs,
      });
      const [saved] = await deps.runs.listParts(run.runId);
      if (!saved) throw new Error('no part');
      current = saved;
    }
    expect(current).toMatchObject({ status: 'done', outputs: 40, errors: 0 });
    expect(idsOf(await linesUnder('runs/flaky/outputs/'))).toEqual([...ids].sort());
    expect(await linesUnder('runs/flaky/errors/')).toEqual([]);
  });
});

describe('collecting a part whose result files come back short', () => {
  it('leaves the part to be read again, counting the reads, and takes the files as they are after MAX_REDOWNLOADS', async () => {
    const clock = new Clock();
    const deps = depsFor(defineWork({ name: 'short', model: 'gpt-4o-mini' }), clock);
    const ids = ['s1', 's2', 's3'];
    const ready = await collectingPart(deps, 'short-1', ids);
    // A proxy's page in place of the output file: no stand-in answers one, so the API's download is wrapped.
    const api: BatchApi = {
      ...ready.api,
      fileContent: async function* () {
        yield Buffer.from('<html><body>Sign in to the network</body></html>\n');
      },
    };
    const save = (p: Part) => deps.runs.putPart('short-1', p);
    let part = (await save({ ...ready.part, completed: ids.length })) ?? ready.part;
    for (let read = 1; read <= MAX_REDOWNLOADS; read++) {
      await expect(collect(deps, api, ready.run, part, save)).rejects.toBeInstanceOf(ShortDownloadError);
      [part = part] = await deps.runs.listParts('short-1');
      expect(part).toMatchObject({ status: 'collecting', redownloads: read, resubmitted: 0 });
    }
    // Read enough times: its requests are sent again, as for results OpenAI did not give.
    const child = await collect(deps, api, ready.run, part, save);
    expect(child).toMatchObject({ part: 1, requests: ids.length });
  });
});

describe('collecting a part of a pack of objects', () => {
  it("names each error by its own object and line, and names no line of a pack once the run's plan is gone", async () => {
    const clock = new Clock();
    // The hook refuses every answer: each request ends in errors, under its line.
    const work = defineWork({
      name: 'packed',
      model: 'gpt-4o-mini',
      download: () => {
        throw new Error('no');
      },
    } satisfies WorkConfig);
    const deps = depsFor(work, clock);
    const collectPack = async (runId: string) => {
      // A pack of two objects of two lines: the part's lines file numbers them 1 to 4 across the pack.
      const { run, part, api } = await collectingPart(deps, runId, ['a1', 'a2', 'b1', 'b2']);
      const objects = [
        { key: `in/${runId}/a.jsonl`, size: 20, etag: '"a"', gzip: false },
        { key: `in/${runId}/b.jsonl`, size: 20, etag: '"b"', gzip: false },
      ];
      const shard: Shard = {
        shard: 0,
        object: 0,
        ...objects[0],
        start: 0,
        end: 20,
        gzip: false,
        objects: 2,
      } as Shard;
      const planWidth = planCodec.width([shard]);
      const objectWidth = Math.max(...objects.map((o) => objectListCodec.widthOf(o)));
      await writeAll(deps.blobs, runKeys(runId).plan, planCodec.encode(shard, planWidth));
      await writeAll(
        deps.blobs,
        runKeys(runId).objectList,
        objects.map((o) => objectListCodec.encode(o, objectWidth)).join(''),
      );
      await writeAll(deps.blobs, runKeys(runId).packStarts(0), JSON.stringify({ starts: [0, 2] }));
      const packed = { ...run, dataset: { ...run.dataset, objects: 2, planWidth, objectWidth } };
      return { run: packed, part, api };
    };
    const errorsOf = async (runId: string) =>
      (await linesUnder(`runs/${runId}/errors/`))
        .map((l) => `${l.value.id} ${l.value.object} ${l.value.line}`)
        .sort();

    const whole = await collectPack('packed');
    await collect(deps, whole.api, whole.run, whole.part, (p) => deps.runs.putPart('packed', p));
    expect(await errorsOf('packed')).toEqual([
      'a1 in/packed/a.jsonl 1',
      'a2 in/packed/a.jsonl 2',
      'b1 in/packed/b.jsonl 1',
      'b2 in/packed/b.jsonl 2',
    ]);

    // The plan expired (a failed run resumed long after): a line of the pack cannot be placed.
    const gone = await collectPack('packed-gone');
    await deps.blobs.delete([runKeys('packed-gone').plan]);
    await collect(deps, gone.api, gone.run, gone.part, (p) => deps.runs.putPart('packed-gone', p));
    expect(await errorsOf('packed-gone')).toEqual([
      'a1 null null',
      'a2 null null',
      'b1 null null',
      'b2 null null',
    ]);

    // A run of one object has no pack: its plan gone, each error keeps its line, and names the object.
    const single = await collectingPart(deps, 'single-gone', ['x1', 'x2', 'x3']);
    const run = { ...single.run, dataset: { ...single.run.dataset, key: 'in/one.jsonl', objectWidth: 60 } };
    expect(await deps.blobs.head(runKeys('single-gone').plan)).toBeNull();
    await collect(deps, single.api, run, single.part, (p) => deps.runs.putPart('single-gone', p));
    expect(await errorsOf('single-gone')).toEqual([
      'x1 in/one.jsonl 1',
      'x2 in/one.jsonl 2',
      'x3 in/one.jsonl 3',
    ]);
  });
});
