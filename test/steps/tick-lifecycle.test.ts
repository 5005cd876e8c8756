import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoRunStore } from '../../functions/adapters/dynamo-run-store';
import { S3BlobStore } from '../../functions/adapters/s3-blob-store';
import type { BatchApi, BlobStore, CreateBatchInput, RunStore } from '../../functions/core/ports';
import type { BatchView } from '../../functions/core/reconciler';
import { newPart, type Part, runKeys } from '../../functions/core/run';
import { defineWork } from '../../functions/core/work';
import type { StepDeps } from '../../functions/steps/deps';
import { StoredParts } from '../../functions/steps/storage';
import { tick } from '../../functions/steps/tick';
import { type LocalDynamo, type LocalS3, startDynamo, startS3 } from '../../local/stand-ins';
import { Crash, CrashPlan } from '../support/crash';
import { runFixture } from '../support/runs';

/**
 * The part lifecycle as a property of the real Tick (functions/steps/tick.ts): fast-check draws how many
 * parts a run has, the active-batch limit, each batch's fate (completed, expired with leftovers, cancelled
 * from outside with partial results, failed validation, refused for the enqueued-token limit), creates
 * whose answer is lost before or after OpenAI acted, and for each Tick a crash point (the Tick dies right
 * after its n-th side effect, as a Lambda would; Step Functions runs it again). Tick after Tick then
 * drives the run to its end, and after every scenario:
 * - every part ends done, and the run ends;
 * - no part is paid for twice (two batches of one part that both ran);
 * - the active-batch limit held whenever a batch was created;
 * - each part only moved forward in its lifecycle (but back to pending from a lost create or a token
 *   limit refusal, which cost nothing);
 * - every request ends exactly once, in outputs or in errors.
 *
 * The run store is DynamoDB Local and the blobs are in s3rver, each scenario under a run id of its own.
 * OpenAI is a scripted {@link BatchApi}: the emulator cannot be told what becomes of a given batch, and
 * the property needs to choose each batch's fate. It answers as OpenAI does (views, result and error
 * files in OpenAI's JSONL shapes), moving each batch one status further between two Ticks and listing a
 * new batch only from the next Tick on (so a lost create is not always found at once).
 */

type Fate = 'completed' | 'expired' | 'cancelled' | 'invalid' | 'token_limit';
type CreateFault = 'none' | 'lost_before' | 'lost_after';

const REQUESTS_PER_PART = 4;
const MAX_TICKS = 300;
const ORDER: Record<Part['status'], number> = {
  pending: 0,
  submitting: 1,
  active: 2,
  collecting: 3,
  done: 4,
};
const TERMINAL = new Set(['completed', 'expired', 'cancelled', 'failed']);

const scenario = fc.record({
  parts: fc.integer({ min: 1, max: 4 }),
  maxActiveBatches: fc.integer({ min: 1, max: 3 }),
  maxResubmits: fc.integer({ min: 0, max: 2 }),
  /** One per batch created, in order; after them every batch completes. */
  fates: fc.array(
    fc.constantFrom<Fate>('completed', 'completed', 'expired', 'cancelled', 'invalid', 'token_limit'),
    { maxLength: 12 },
  ),
  /** One per create, in order; after them no answer is lost. */
  creates: fc.array(fc.constantFrom<CreateFault>('none', 'none', 'lost_before', 'lost_after'), {
    maxLength: 12,
  }),
  /** One per Tick: after how many side effects it dies (0, or more than it makes: it does not die). */
  crashes: fc.array(fc.integer({ min: 0, max: 14 }), { maxLength: 30 }),
});
type Scenario = typeof scenario extends fc.Arbitrary<infer S> ? S : never;

function pathOf(fate: Fate): string[] {
  switch (fate) {
    case 'completed':
      return ['in_progress', 'finalizing', 'completed'];
    case 'expired':
      return ['in_progress', 'expired'];
    case 'cancelled':
      return ['in_progress', 'cancelling', 'cancelled'];
    case 'invalid':
    case 'token_limit':
      return ['failed'];
  }
}

/** A scripted batch: its view, the statuses it will go through, and its fate. */
interface ScriptedBatch {
  view: BatchView;
  path: string[];
  fate: Fate;
  customIds: string[];
  /** Listed by `recentBatches`: as on OpenAI, a new batch shows in the list only a moment later. */
  listed: boolean;
}

/** OpenAI as a script: each batch's fate is drawn, and it moves one status a step. */
class ScriptedOpenAI implements BatchApi {
  readonly batches = new Map<string, ScriptedBatch>();
  private readonly files = new Map<string, string>();
  /** Batches of the run in flight (not final) each time one was created, the new one included. */
  readonly inFlightAtCreate: number[] = [];
  private draws = 0;

  constructor(
    private readonly s: Scenario,
    private readonly now: () => number,
  ) {}

  /** Every batch one status further (between two Ticks). */
  step(): void {
    for (const batch of this.batches.values()) {
      batch.listed = true;
      const status = batch.path.shift();
      if (!status) continue;
      const total = batch.customIds.length;
      const half = Math.floor(total / 2);
      const view = { ...batch.view, status, total };
      if (status === 'failed') {
        const code = batch.fate === 'token_limit' ? 'token_limit_exceeded' : 'invalid_request';
        view.errors = [{ code, message: `scripted ${code}`, line: null }];
        view.total = 0;
      }
      if (status === 'completed') {
        view.completed = total;
        view.outputFileId = this.file(batch.customIds.map(outputLine));
      }
      if (status === 'expired' || status === 'cancelled') {
        // Half the requests ran; the rest end in the error file with the batch's reason.
        const code = status === 'expired' ? 'batch_expired' : 'batch_cancelled';
        view.completed = half;
        view.failed = total - half;
        view.outputFileId = half > 0 ? this.file(batch.customIds.slice(0, half).map(outputLine)) : null;
        view.errorFileId = this.file(batch.customIds.slice(half).map((id) => errorLine(id, code)));
      }
      batch.view = view;
    }
  }

  private file(lines: string[]): string {
    const id = `file-${this.files.size}`;
    this.files.set(id, lines.map((l) => `${l}\n`).join(''));
    return id;
  }

  async uploadFile(_filename: string, body: AsyncIterable<Uint8Array>): Promise<string> {
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(Buffer.from(chunk));
    const id = `file-${this.files.size}`;
    this.files.set(id, Buffer.concat(chunks).toString('utf8'));
    return id;
  }

  async createBatch(input: CreateBatchInput): Promise<BatchView> {
    const fault = this.s.creates[this.draws] ?? 'none';
    const fate = this.s.fates[this.draws] ?? 'completed';
    this.draws += 1;
    if (fault === 'lost_before') throw new Error('Connection error. (scripted: lost before OpenAI acted)');
    const text = this.files.get(input.fileId) ?? '';
    const customIds = text
      .split('\n')
      .filter(Boolean)
      .map((l) => (JSON.parse(l) as { custom_id: string }).custom_id);
    const view: BatchView = {
      id: `batch_${this.batches.size}`,
      status: 'validating',
      total: 0,
      completed: 0,
      failed: 0,
      outputFileId: null,
      errorFileId: null,
      errors: [],
      metadata: input.metadata,
      createdAt: Math.floor(this.now() / 1000),
    };
    this.batches.set(view.id, { view, path: pathOf(fate), fate, customIds, listed: false });
    this.inFlightAtCreate.push([...this.batches.values()].filter((b) => !TERMINAL.has(b.view.status)).length);
    if (fault === 'lost_after') throw new Error('Connection error. (scripted: lost after OpenAI acted)');
    return view;
  }

  async getBatch(batchId: string): Promise<BatchView> {
    const batch = this.batches.get(batchId);
    if (!batch) throw Object.assign(new Error(`No batch found with id '${batchId}'.`), { status: 404 });
    return batch.view;
  }

  async recentBatches(since: number): Promise<BatchView[]> {
    return [...this.batches.values()]
      .filter((b) => b.listed)
      .map((b) => b.view)
      .filter((v) => v.createdAt >= since)
      .reverse();
  }

  async cancelBatch(batchId: string): Promise<BatchView> {
    const batch = this.batches.get(batchId);
    if (!batch) throw Object.assign(new Error(`No batch found with id '${batchId}'.`), { status: 404 });
    if (!TERMINAL.has(batch.view.status)) {
      batch.fate = 'cancelled';
      batch.path = ['cancelled'];
      batch.view = { ...batch.view, status: 'cancelling' };
    }
    return batch.view;
  }

  async *fileContent(fileId: string): AsyncIterable<Uint8Array> {
    yield Buffer.from(this.files.get(fileId) ?? '');
  }

  async deleteFile(fileId: string): Promise<void> {
    this.files.delete(fileId);
  }

  async filesNamed(): Promise<string[]> {
    return [];
  }
}

const outputLine = (customId: string) =>
  JSON.stringify({
    id: `batch_req_${customId}`,
    custom_id: customId,
    response: {
      status_code: 200,
      request_id: `req_${customId}`,
      body: {
        model: 'gpt-4o-mini',
        choices: [{ index: 0, message: { role: 'assistant', content: `answer ${customId}` } }],
        usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 },
      },
    },
    error: null,
  });

const errorLine = (customId: string, code: string) =>
  JSON.stringify({
    id: `batch_req_${customId}`,
    custom_id: customId,
    response: null,
    error: { code, message: `scripted ${code}` },
  });

let dir: string;
let s3: LocalS3;
let dynamo: LocalDynamo;
let blobs: BlobStore;
let store: RunStore;
let scenarios = 0;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'openai-batch-lifecycle-'));
  s3 = await startS3(join(dir, 's3'), 'lifecycle');
  dynamo = await startDynamo('lifecycle-runs');
  blobs = new S3BlobStore(s3.client, s3.bucket);
  store = new DynamoRunStore(dynamo.client, dynamo.table);
}, 60_000);

afterAll(async () => {
  await dynamo?.stop();
  await s3?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Lines of a run's JSONL objects under a prefix. */
async function linesUnder(prefix: string): Promise<Record<string, unknown>[]> {
  const lines: Record<string, unknown>[] = [];
  for await (const object of blobs.list(prefix)) {
    const chunks: Buffer[] = [];
    for await (const chunk of blobs.read(object.key)) chunks.push(Buffer.from(chunk));
    for (const line of Buffer.concat(chunks).toString('utf8').split('\n'))
      if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
  }
  return lines;
}

/** Drives one scenario through the real Tick and checks the invariants. */
async function check(s: Scenario): Promise<void> {
  scenarios += 1;
  const runId = `life-${scenarios}-${Date.now().toString(36)}`;
  let now = 1_800_000_000_000;
  const openai = new ScriptedOpenAI(s, () => now);
  const work = defineWork<{ id: string }>({
    name: 'lifecycle',
    model: 'gpt-4o-mini',
    maxActiveBatches: s.maxActiveBatches,
    maxResubmits: s.maxResubmits,
    minPollSeconds: 1,
    maxPollSeconds: 300,
    upload: (record) => ({ id: record.id, messages: [] }),
    download: (item) => ({ id: item.id, answer: item.content }),
    downloadError: (item) => ({ id: item.id, code: item.code, line: item.line }),
  });

  // The run as Prepare leaves it: request files in the store, pending parts in the table.
  const customIds: string[] = [];
  const files = new StoredParts(blobs, runId);
  const parts: Part[] = [];
  for (let p = 0; p < s.parts; p++) {
    for (let r = 0; r < REQUESTS_PER_PART; r++) {
      const customId = `p${p}-r${r}`;
      customIds.push(customId);
      const body = { model: 'gpt-4o-mini', messages: [] };
      const json = JSON.stringify({ custom_id: customId, method: 'POST', url: '/v1/chat/completions', body });
      await files.writeRaw(p, json, customIds.length, customId);
    }
    await files.close({ part: p });
    parts.push(
      newPart({
        part: p,
        generation: 0,
        model: 'gpt-4o-mini',
        requests: REQUESTS_PER_PART,
        bytes: 1,
        estimatedTokens: 10,
      }),
    );
  }
  const fixture = runFixture(runId, `hash-${runId}`, now);
  await store.createRun(
    {
      ...fixture,
      status: 'running',
      prepared: true,
      nextPart: s.parts,
    },
    false,
  );
  await store.addParts(runId, parts);

  // Each part's statuses as written: the part history the property checks.
  const history = new Map<number, Part['status'][]>();
  const recording: RunStore = new Proxy(store, {
    get: (target, property, receiver) => {
      const value = Reflect.get(target, property, receiver) as unknown;
      if (property !== 'putPart' || typeof value !== 'function') return value;
      return async (id: string, part: Part) => {
        const saved = await target.putPart(id, part);
        if (saved) history.set(part.part, [...(history.get(part.part) ?? []), saved.status]);
        return saved;
      };
    },
  });

  let done = false;
  let crashes = 0;
  for (let t = 0; t < MAX_TICKS && !done; t++) {
    const plan = new CrashPlan(s.crashes[t] ?? null);
    const deps: StepDeps<{ id: string }> = {
      work,
      bucket: s3.bucket,
      blobs: plan.ports.blobs(blobs),
      runs: plan.ports.runs(recording),
      openai: async () => plan.ports.openai(openai),
      notifier: { notify: async () => {} },
      now: () => now,
      budgetMs: 240_000,
      maxTicksPerExecution: 1500,
      lostCreateGraceMs: 5_000,
      log: () => {},
      metric: () => {},
    };
    try {
      const ticked = await tick(deps, { runId });
      done = ticked.done;
      if (!done) {
        // The Wait: time passes as Tick asked, and OpenAI moves every batch one status on.
        now += ticked.waitSeconds * 1000;
        openai.step();
      }
    } catch (caught) {
      if (!(caught instanceof Crash)) throw caught;
      crashes += 1; // Step Functions runs the Tick again, at once
    }
  }

  const context = JSON.stringify({
    s,
    crashes,
    batches: [...openai.batches.values()].map((b) => [b.view.metadata.part, b.fate, b.view.status]),
  });
  expect(done, context).toBe(true);
  const ended = await store.listParts(runId);
  expect(
    ended.filter((p) => p.status !== 'done').map((p) => p.part),
    context,
  ).toEqual([]);

  // A batch that ran (any status but failed) is paid for: at most one per part.
  const paid = new Map<string, number>();
  for (const { view } of openai.batches.values()) {
    const part = view.metadata.part ?? '';
    if (view.status !== 'failed') paid.set(part, (paid.get(part) ?? 0) + 1);
  }
  expect(
    [...paid.entries()].filter(([, n]) => n > 1),
    context,
  ).toEqual([]);
  expect(Math.max(0, ...openai.inFlightAtCreate), context).toBeLessThanOrEqual(s.maxActiveBatches);

  for (const [part, statuses] of history)
    for (let i = 1; i < statuses.length; i++) {
      const from = statuses[i - 1] ?? 'pending';
      const to = statuses[i] ?? 'pending';
      const back = ORDER[to] < ORDER[from];
      const allowed = to === 'pending' && (from === 'submitting' || from === 'active');
      expect(back && !allowed, `part ${part}: ${statuses.join(' -> ')} ${context}`).toBe(false);
    }

  const { prefix } = runKeys(runId);
  const outputs = (await linesUnder(`${prefix}outputs/`)).map((o) => String(o.id));
  const errors = (await linesUnder(`${prefix}errors/`)).map((e) => String(e.id));
  expect([...outputs, ...errors].sort(), context).toEqual([...customIds].sort());
}

describe('the real Tick under random batch fates, lost creates and crash points', () => {
  it('ends every part and every request once, pays no part twice, keeps the limit, and moves parts forward', async () => {
    await fc.assert(fc.asyncProperty(scenario, check), { numRuns: 25, seed: 12, endOnFailure: true });
  }, 120_000);
});
