import { GetObjectCommand, ListObjectsCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import type { RunStore } from '../../functions/core/ports';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import { prepare } from '../../functions/steps/prepare';
import { writeAll } from '../../functions/steps/storage';
import { localDeps, RecordingNotifier } from '../../local/runner';
import { localEnvironment } from '../support/local-environment';
import { runFixture } from '../support/runs';

/**
 * The Prepare step through the real stand-ins: a step that crashed after writing its files and is run
 * again with a shorter budget (it reads less) leaves every request and error line once.
 */

const shared = localEnvironment('openai-batch-prepare-', { kind: 'emulator', options: {} });

const RECORD_MS = 10; // each record's upload hook takes this long, on the manual clock

/** Lines under a prefix, parsed. */
async function linesUnder(prefix: string): Promise<Record<string, unknown>[]> {
  const listed = await shared.env.s3.client.send(
    new ListObjectsCommand({ Bucket: shared.env.s3.bucket, Prefix: prefix }),
  );
  const found: Record<string, unknown>[] = [];
  for (const object of listed.Contents ?? []) {
    if (!object.Key?.endsWith('.jsonl')) continue;
    const body = await shared.env.s3.client.send(
      new GetObjectCommand({ Bucket: shared.env.s3.bucket, Key: object.Key }),
    );
    for (const line of ((await body.Body?.transformToString()) ?? '').split('\n'))
      if (line) found.push(JSON.parse(line));
  }
  return found;
}

/** A run store whose first putRun dies: the step's files are written, its checkpoint is not. */
function crashingOnPutRun(runs: RunStore): RunStore {
  let armed = true;
  return new Proxy(runs, {
    get: (store, property, receiver) => {
      if (property !== 'putRun') return Reflect.get(store, property, receiver);
      return async (...args: Parameters<RunStore['putRun']>) => {
        if (armed) {
          armed = false;
          throw new Error('Lambda timed out');
        }
        return store.putRun(...args);
      };
    },
  });
}

describe('the Prepare step', () => {
  it('writes each error and request once when a step that crashed is run again and reads less', async () => {
    const runId = 'retried';
    const key = `inputs/${runId}.jsonl`;
    const lines = Array.from({ length: 40 }, (_, i) =>
      i >= 24 && i < 28
        ? '{bad'
        : JSON.stringify({ id: `r${i}`, messages: [{ role: 'user', content: 'q' }] }),
    );
    let clock = 1_000_000;
    const work = defineWork({
      name: 'prep',
      model: 'gpt-4o-mini',
      maxRequestsPerBatch: 8,
      upload: (record) => {
        clock += RECORD_MS;
        return record as { id: string };
      },
    });
    const base = localDeps(shared.env, work, { now: () => clock }, new RecordingNotifier()) as StepDeps<
      Record<string, unknown>
    >;
    await writeAll(base.blobs, key, `${lines.join('\n')}\n`);
    const info = await base.blobs.head(key);
    if (!info) throw new Error('no dataset');
    await base.runs.createRun({ ...runFixture(runId), objects: [info] }, false);

    // The first attempt reads the whole dataset in one step, writes its files, and dies before its checkpoint.
    const crashing = crashingOnPutRun(base.runs);
    await expect(prepare({ ...base, runs: crashing, budgetMs: 1_000_000 }, { runId })).rejects.toThrow(
      'Lambda timed out',
    );
    expect((await linesUnder(`runs/${runId}/errors/`)).map((e) => e.line)).toEqual([25, 26, 27, 28]);

    // Run again with a budget of about five records a step: the first step reads none of the bad lines.
    let steps = 0;
    for (; steps < 50; steps++)
      if ((await prepare({ ...base, budgetMs: 5 * RECORD_MS }, { runId })).prepared) break;
    expect(steps).toBeGreaterThan(3);

    const errors = await linesUnder(`runs/${runId}/errors/`);
    expect(errors.map((e) => e.line).sort()).toEqual([25, 26, 27, 28]);
    const run = await base.runs.getRun(runId);
    expect(run?.counts).toMatchObject({ records: 40, errors: 4, invalidRecords: 4, submittedRequests: 36 });
    // The parts recorded hold each request once (what the crashed attempt wrote beyond them is not a part).
    const requested: string[] = [];
    for (const part of await base.runs.listParts(runId)) {
      const file = await linesUnder(
        `runs/${runId}/requests/part-${String(part.part).padStart(5, '0')}.jsonl`,
      );
      expect(file).toHaveLength(part.requests);
      requested.push(...file.map((r) => String(r.custom_id)));
    }
    expect(requested.sort()).toEqual(
      lines.flatMap((l) => (l === '{bad' ? [] : [JSON.parse(l).id as string])).sort(),
    );
  });
});
