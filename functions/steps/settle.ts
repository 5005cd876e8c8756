import { addCounts, type Counts, withDuplicates, zeroCounts } from '../core/accounting';
import { parsePartLine } from '../core/collect';
import { type DedupHeld, type Duplicate, duplicatesIn } from '../core/dedup';
import { CostLimitError, DatasetError, InvariantError } from '../core/errors';
import { type IdFileIndex, readIdFileIndex, readIdFilesAhead } from '../core/id-files';
import { errorItem } from '../core/items';
import { forEachLimit, mapLimit } from '../core/limit';
import { type BlobStore, ConflictError } from '../core/ports';
import { errorLine } from '../core/prepare';
import { costOf } from '../core/prices';
import { type Part, type Run, runKeys, type SettleState } from '../core/run';
import { shardOfPart } from '../core/shards';
import type { StepDeps } from './deps';
import { runOf, updateRun } from './runs';
import { type DatasetPlace, laneCheckpoint, partLinesKey, ShardPlaces } from './storage';

/**
 * Id entries a partition group holds at most (a group is at least one partition, whatever it holds):
 * the dedup of 2,000,000 entries takes about 40 MiB (a 4M-slot fingerprint table) plus the colliding ids.
 */
export const GROUP_ENTRIES = 2_000_000;

/**
 * Drops Settle holds at most before it writes them, sorted, as a run of its own (a few MiB): a group's
 * duplicates are never all held, however many uses an id has.
 */
export const DROP_RUN = 50_000;

/** US dollars for a person: cents, or four significant digits below a cent. */
export function usd(amount: number): string {
  return amount >= 0.01 || amount === 0 ? `$${amount.toFixed(2)}` : `$${amount.toPrecision(4)}`;
}

/** A request to take out of its part: a later use of an id, as a line of a drops file. */
interface Drop {
  readonly part: number;
  readonly line: number;
  readonly id: string;
  readonly shard: number;
  readonly bytes: number;
  readonly tokens: number;
}

/**
 * Settles a prepared run, once every prepare lane is done, for as long as its time budget allows; the state
 * machine calls it again until `settled`. In stages, its progress in `run.settle`:
 *
 * - (start) the lanes' counts and estimated tokens are summed into the run, once;
 * - `dedup`: the id files are read partition group by partition group (each group bounded in entries); a
 *   custom_id used more than once keeps its earliest use (shard, then line), and each later use is written,
 *   as it is found, as a `duplicate_id` error to the group's errors file and as a drop to the group's drop
 *   runs (at most `DROP_RUN` drops held, each run sorted by part), all whole (and any run of an earlier
 *   attempt beyond them removed) before the run's counts move (submitted -1, refused +1, errors +1 a
 *   duplicate) with the group's progress in one write. Memory grows with the distinct ids used more than
 *   once, never with their uses;
 * - `drop`: the drops files are merged in part order, and each part that holds drops is rewritten without
 *   them (its requests and `.lines` files, through a copy under `state/settle/` so that the two files never
 *   disagree), its record reduced by what the drops added. A part left with no request is marked done, with
 *   zero requests, and its files are removed: nothing is sent for it, and Finalize, the summary and the
 *   reconciliation count it as a part with nothing in it;
 * - `release`: the "no records" check, the cost estimate and the work's maxCostUsd, then every held part is
 *   released to Tick, and the run is prepared and running.
 *
 * A call that dies anywhere is run again: files are rewritten whole with the same content, drops are found
 * by (custom_id, line), and a part's record is reduced only while it still counts the dropped requests.
 */
export async function settle<R>(
  deps: StepDeps<R>,
  input: { runId: string; groupEntries?: number; dropRun?: number },
): Promise<{ settled: boolean }> {
  const started = deps.now();
  let worked = false;
  /** True for the call's first unit of work, then while the budget lasts. */
  const mayWork = (): boolean => {
    if (!worked) {
      worked = true;
      return true;
    }
    return deps.now() - started <= deps.budgetMs;
  };
  let run = await runOf(deps.runs, input.runId);
  if (run.prepared) return { settled: true };
  if (!run.settle) run = await begin(deps, run);
  const ctx = new SettleContext(deps, run, input.groupEntries ?? GROUP_ENTRIES, input.dropRun ?? DROP_RUN);
  for (;;) {
    const state = run.settle;
    if (!state) throw new InvariantError(`run ${run.runId} has no settle state`);
    if (state.stage === 'dedup') {
      if (state.partition >= run.dataset.partitions) {
        run = await ctx.advance(state, (r) => ({ ...r, settle: { ...state, stage: 'drop', part: 0 } }));
        continue;
      }
      if (!mayWork()) return { settled: false };
      run = await ctx.dedupGroup(state);
    } else if (state.stage === 'drop') {
      const finished = await ctx.dropAll(state, mayWork);
      if (!finished) return { settled: false };
      run = await ctx.advance(ctx.run.settle ?? state, (r) => ({
        ...r,
        settle: { ...(r.settle ?? state), stage: 'release', part: 0 },
      }));
    } else {
      return { settled: await ctx.release(mayWork) };
    }
    ctx.run = run;
  }
}

/**
 * Settles shard 0 on its own, as soon as lane 0 has prepared it, so that its parts go to OpenAI while the
 * other shards are still preparing (the first batch after about one shard, not after the whole dataset):
 * the earliest use of any id in shard 0 is in shard 0, so what it drops there no later shard changes, and
 * Settle later skips shard 0's own duplicates. Answers what lane 0 counts: the duplicates and their tokens.
 * Run again after a crash, it writes the same errors file and finds its drops done.
 */
export async function settleFirstShard<R>(
  deps: StepDeps<R>,
  run: Run,
  dropRun = DROP_RUN,
  groupEntries = GROUP_ENTRIES,
): Promise<{ duplicates: number; tokens: number } | null> {
  return new SettleContext(deps, run, groupEntries, dropRun).settleFirst();
}

/** Sums the lanes' checkpoints into the run and starts the dedup stage, once. */
async function begin<R>(deps: StepDeps<R>, run: Run): Promise<Run> {
  const lanes = await Promise.all(
    Array.from({ length: run.dataset.lanes }, async (_, lane) => {
      const checkpoint = await laneCheckpoint(deps.blobs, run.runId, lane);
      if (!checkpoint?.done) throw new InvariantError(`run ${run.runId}: lane ${lane} is not done`);
      return checkpoint;
    }),
  );
  let counts: Counts = zeroCounts();
  let estimatedTokens = 0;
  for (const lane of lanes) {
    counts = addCounts(counts, lane.counts);
    estimatedTokens += lane.estimatedTokens;
  }
  const settled = await updateRun(deps.runs, run.runId, (r) =>
    r.settle
      ? r
      : {
          ...r,
          counts,
          estimatedTokens,
          settle: {
            stage: 'dedup',
            partition: 0,
            part: 0,
            duplicates: 0,
            firstShardSettled: lanes[0]?.firstShardSettled ?? false,
          },
          updatedAt: deps.now(),
        },
  );
  deps.log('settle started', { runId: run.runId, lanes: lanes.length, records: counts.records });
  return settled;
}

/** What one Settle call keeps between its units of work (the id files' indexes, the shard plan, parts). */
class SettleContext<R> {
  /** The id files under a prefix and their indexes, read once a call. */
  private readonly idFiles = new Map<string, { key: string; index: IdFileIndex }[]>();
  private readonly places: ShardPlaces;
  private parts: Map<number, Part> | null = null;
  private readonly keys: ReturnType<typeof runKeys>;

  constructor(
    private readonly deps: StepDeps<R>,
    public run: Run,
    private readonly groupEntries: number,
    private readonly dropRun: number,
  ) {
    this.keys = runKeys(run.runId);
    this.places = new ShardPlaces(deps.blobs, run);
  }

  /** Moves the run on from `from` (when it is still there), re-read and re-applied on a concurrent write. */
  async advance(from: SettleState, change: (run: Run) => Run): Promise<Run> {
    this.run = await updateRun(this.deps.runs, this.run.runId, (r) =>
      r.settle && sameState(r.settle, from) && !r.prepared ? { ...change(r), updatedAt: this.deps.now() } : r,
    );
    return this.run;
  }

  // --- dedup ---

  /** The id files and their indexes, read once a call. */
  private async indexes(prefix = this.keys.idFiles): Promise<{ key: string; index: IdFileIndex }[]> {
    const known = this.idFiles.get(prefix);
    if (known) return known;
    const keys: string[] = [];
    for await (const object of this.deps.blobs.list(prefix))
      if (!object.key.endsWith('.idx')) keys.push(object.key);
    const files = await mapLimit(keys, 16, async (key) => ({
      key,
      index: await readIdFileIndex(this.deps.blobs, key),
    }));
    for (const file of files) {
      if (file.index.partitions !== this.run.dataset.partitions)
        throw new InvariantError(
          `id file ${file.key} has ${file.index.partitions} partitions, the run ${this.run.dataset.partitions}`,
        );
    }
    this.idFiles.set(prefix, files);
    return files;
  }

  /** Finds the duplicates of the partition group that starts at `state.partition`, and records them. */
  async dedupGroup(state: SettleState): Promise<Run> {
    const files = await this.indexes();
    const partitions = this.run.dataset.partitions;
    const p0 = state.partition;
    const countOf = (p: number) => files.reduce((n, f) => n + (f.index.counts[p] ?? 0), 0);
    let entries = countOf(p0);
    let p1 = p0 + 1;
    while (p1 < partitions) {
      const next = countOf(p1);
      if (entries + next > this.groupEntries) break;
      entries += next;
      p1 += 1;
    }
    const blobs = this.deps.blobs;
    // In key order (as listed): each id's uses come in (shard, line) order, as duplicatesIn wants them.
    const holding = files.filter((f) => f.index.counts.slice(p0, p1).some((n) => n > 0));
    const source = () => readIdFilesAhead(blobs, holding, p0, p1);
    // Shard 0's own duplicates were dropped when it was settled early; its entries still name the winners.
    const skipFirst = state.firstShardSettled;
    const found: DedupHeld = { ids: 0, uses: 0 };
    async function* duplicates(): AsyncGenerator<Duplicate> {
      for await (const d of duplicatesIn(source, entries, found))
        if (!(skipFirst && d.entry.shard === 0)) yield d;
    }
    const written = await this.writeDuplicates(
      duplicates(),
      this.keys.duplicateErrors(p0),
      (k) => this.keys.drops(p0, k),
      this.keys.dropRuns(p0),
    );
    const { n, tokens } = written;
    this.deps.log('settle dedup', {
      runId: this.run.runId,
      partitions: [p0, p1],
      entries,
      duplicates: n,
      dropRuns: written.runs,
      heldDrops: written.held,
      heldIds: found.ids,
      heldUses: found.uses,
    });
    return this.advance(state, (r) => ({
      ...r,
      counts: withDuplicates(r.counts, n),
      estimatedTokens: Math.max(0, r.estimatedTokens - tokens),
      settle: { ...state, partition: p1, duplicates: state.duplicates + n },
    }));
  }

  /**
   * Settles shard 0 alone: its duplicates (the earliest use of an id is always in it, so no later shard
   * can change them), dropped from its parts, written as errors, then its parts released.
   */
  async settleFirst(): Promise<{ duplicates: number; tokens: number } | null> {
    const blobs = this.deps.blobs;
    const partitions = this.run.dataset.partitions;
    const files = await this.indexes(`${this.keys.idFiles}${String(0).padStart(6, '0')}-`);
    const entries = files.reduce((n, f) => n + f.index.counts.reduce((a, b) => a + b, 0), 0);
    // All of shard 0's ids are held at once here: no more than in one of Settle's groups, whose memory is
    // bounded by it (a gzip object is one shard, of any size). A larger shard 0 is left to Settle.
    if (entries > this.groupEntries) {
      // What an attempt of an earlier release may have written of it goes: Settle finds it all again.
      const earlier = [this.keys.firstShardDuplicateErrors];
      for await (const object of blobs.list(this.keys.firstShardDropFiles)) earlier.push(object.key);
      await blobs.delete(earlier);
      this.deps.log('first shard left to settle', {
        runId: this.run.runId,
        entries,
        most: this.groupEntries,
      });
      return null;
    }
    const source = () => readIdFilesAhead(blobs, files, 0, partitions);
    const found: DedupHeld = { ids: 0, uses: 0 };
    async function* duplicates(): AsyncGenerator<Duplicate> {
      for await (const d of duplicatesIn(source, entries, found)) if (d.entry.shard === 0) yield d;
    }
    const written = await this.writeDuplicates(
      duplicates(),
      this.keys.firstShardDuplicateErrors,
      (k) => this.keys.firstShardDrops(k),
      this.keys.firstShardDropFiles,
    );
    // Read back by part from the runs just written: one part's drops held at a time.
    const runs: string[] = [];
    for await (const object of blobs.list(this.keys.firstShardDropFiles)) runs.push(object.key);
    for await (const { part, drops } of dropsByPart(blobs, runs, 0)) await this.dropFrom(part, drops);
    for (const part of (await this.deps.runs.listParts(this.run.runId)).sort((a, b) => a.part - b.part)) {
      if (!part.held || shardOfPart(part.part) !== 0) continue;
      const stored = await this.deps.runs.putPart(this.run.runId, { ...part, held: false });
      if (!stored) throw new ConflictError(`part ${part.part} of run ${this.run.runId} changed meanwhile`);
    }
    this.deps.log('first shard settled', {
      runId: this.run.runId,
      entries,
      duplicates: written.n,
      dropRuns: written.runs,
      heldDrops: written.held,
      heldIds: found.ids,
      heldUses: found.uses,
    });
    return { duplicates: written.n, tokens: written.tokens };
  }

  /**
   * Writes a stream of duplicates as they come: each as an errors/ line of `errorsKey`, and as a drop in
   * runs of at most `dropRun` drops, each sorted by part, then line, then id, and written as `runKey(k)`
   * (the k-th run) while the errors are written; the errors file is whole once every run is. Then removes
   * whatever else is under `runsPrefix` (the runs of an earlier attempt beyond these), and with no
   * duplicate the errors file too. The same stream writes the same files: a call that died is run again.
   */
  private async writeDuplicates(
    duplicates: AsyncIterable<Duplicate>,
    errorsKey: string,
    runKey: (run: number) => string,
    runsPrefix: string,
  ): Promise<{ n: number; tokens: number; runs: number; held: number }> {
    const blobs = this.deps.blobs;
    const dropRun = this.dropRun;
    const errorOf = (d: Duplicate) => this.errorOf(d);
    const written = { n: 0, tokens: 0, runs: 0, held: 0 };
    const buffer: Drop[] = [];
    const flush = async () => {
      buffer.sort(compareDrops);
      await blobs.write(runKey(written.runs), jsonlChunks(buffer.map(dropLine)));
      written.runs += 1;
      buffer.length = 0;
    };
    const stream = duplicates[Symbol.asyncIterator]();
    const first = await stream.next();
    async function* errorLines(): AsyncGenerator<string> {
      // The errors of the next few duplicates are made while this one's waits: naming a line may read
      // the plan and a pack's files (a few GETs), for the first use's shard as well, which may be any.
      const ahead: { duplicate: Duplicate; line: Promise<string> }[] = [];
      let next = first;
      try {
        for (;;) {
          while (!next.done && ahead.length < ERRORS_AHEAD) {
            const line = errorOf(next.value);
            line.catch(() => {}); // awaited below, in order; a step that stops before it leaves it
            ahead.push({ duplicate: next.value, line });
            next = await stream.next();
          }
          const due = ahead.shift();
          if (!due) break;
          const { entry: e } = due.duplicate;
          written.n += 1;
          written.tokens += e.tokens;
          yield await due.line;
          buffer.push({
            part: e.part,
            line: e.line,
            id: e.id,
            shard: e.shard,
            bytes: e.bytes,
            tokens: e.tokens,
          });
          written.held = Math.max(written.held, buffer.length);
          if (buffer.length >= dropRun) await flush();
        }
        if (buffer.length > 0) await flush();
      } finally {
        await stream.return?.(undefined);
      }
    }
    if (!first.done) {
      try {
        await blobs.write(errorsKey, jsonlChunks(errorLines()));
      } finally {
        await stream.return?.(undefined); // a write that failed before reading its body leaves it open
      }
    }
    const runs = new Set(Array.from({ length: written.runs }, (_, k) => runKey(k)));
    const stale: string[] = [];
    for await (const object of blobs.list(runsPrefix)) if (!runs.has(object.key)) stale.push(object.key);
    if (written.n === 0) stale.push(errorsKey);
    for (let i = 0; i < stale.length; i += 1000) await blobs.delete(stale.slice(i, i + 1000));
    return written;
  }

  /** The errors/ line of a duplicate, through the work's downloadError hook. */
  private async errorOf({ entry, winner }: Duplicate): Promise<string> {
    const [mine, theirs] = await Promise.all([
      this.places.of(entry.shard, entry.line),
      this.places.of(winner.shard, winner.line),
    ]);
    // In a dataset of several objects the line is named with its object, and so is the first use's.
    const several = this.run.dataset.objects > 1;
    const at = (place: DatasetPlace, named: boolean) =>
      `${place.line === null ? 'a line' : `line ${place.line}`}${named && place.object !== null ? ` of ${place.object}` : ''}`;
    const message = `${at(mine, several)}: id "${entry.id}" was already used on ${at(theirs, several || mine.object !== theirs.object)}; ids must be unique within a run`;
    return errorLine(
      this.deps.work,
      errorItem({
        stage: 'request',
        id: entry.id,
        code: 'duplicate_id',
        message,
        line: mine.line,
        object: mine.object,
      }),
    );
  }

  // --- drop ---

  /** Drops every duplicate from its part, part after part; false when the budget ran out first. */
  async dropAll(state: SettleState, mayWork: () => boolean): Promise<boolean> {
    const keys: string[] = [];
    for await (const object of this.deps.blobs.list(this.keys.dropFiles)) keys.push(object.key);
    let current = state;
    for await (const { part, drops } of dropsByPart(this.deps.blobs, keys, current.part)) {
      if (!mayWork()) return false;
      await this.dropFrom(part, drops);
      const from = current;
      this.run = await this.advance(from, (r) => ({ ...r, settle: { ...from, part: part + 1 } }));
      if (!this.run.settle || !sameState(this.run.settle, { ...from, part: part + 1 }))
        throw new ConflictError(`run ${this.run.runId}: its settle state moved under this call`);
      current = this.run.settle;
    }
    return true;
  }

  private async part(n: number): Promise<Part> {
    this.parts ??= new Map((await this.deps.runs.listParts(this.run.runId)).map((p) => [p.part, p]));
    const part = this.parts.get(n);
    if (!part)
      throw new InvariantError(`run ${this.run.runId} has drops for part ${n}, which does not exist`);
    return part;
  }

  private async putPart(part: Part): Promise<void> {
    const stored = await this.deps.runs.putPart(this.run.runId, part);
    if (!stored) throw new ConflictError(`part ${part.part} of run ${this.run.runId} changed meanwhile`);
    this.parts?.set(stored.part, stored);
  }

  /**
   * Rewrites a part without its drops. The kept requests and lines are written to a copy first (its
   * `.lines` last: the copy is whole once that exists), then copied over the part's files, then the record
   * is reduced, then the copy is removed: a call that dies at any point finds either the part's files as
   * they were, or the whole copy to copy again, or the part rewritten.
   */
  private async dropFrom(n: number, drops: readonly Drop[]): Promise<void> {
    const blobs = this.deps.blobs;
    const part = await this.part(n);
    const requestsKey = this.keys.requests(n);
    const linesKey = await partLinesKey(blobs, this.run.runId, n);
    const copy = {
      requests: `${this.keys.prefix}state/settle/part-${String(n).padStart(5, '0')}.jsonl`,
      lines: `${this.keys.prefix}state/settle/part-${String(n).padStart(5, '0')}.lines`,
    };
    if (part.status === 'done' && part.requests === 0) {
      await blobs.delete([requestsKey, linesKey, copy.requests]); // emptied by an earlier call (either lines file)
      return;
    }
    // Only a part Tick cannot send yet is rewritten (one settled before may have been released since).
    const held = () => {
      if (part.status !== 'pending' || !part.held)
        throw new InvariantError(
          `part ${n} of run ${this.run.runId} is ${part.status}, not held: it cannot be settled`,
        );
    };
    let kept: number;
    if (await blobs.head(copy.lines)) {
      held();
      kept = (await readPartLines(blobs, copy.lines)).length;
    } else {
      const lines = await readPartLines(blobs, linesKey);
      const dropped = new Set(drops.map((d) => dropKey(d.id, d.line)));
      const keptLines: string[] = [];
      let found = 0;
      let index = 0;
      async function* keptLinesOf(): AsyncGenerator<string> {
        for await (const json of textLines(blobs.read(requestsKey))) {
          const entry = lines[index++];
          if (entry === undefined) throw new InvariantError(`part ${n} has more requests than lines`);
          const { line, id: written } = parsePartLine(entry);
          const id = written ?? (JSON.parse(json) as { custom_id?: unknown }).custom_id;
          if (typeof id === 'string' && dropped.has(dropKey(id, line))) {
            found += 1;
            continue;
          }
          keptLines.push(entry);
          yield json;
        }
      }
      const keptRequests = () => jsonlChunks(keptLinesOf());
      // Written to the copy as read; a part rewritten before (found 0) leaves a copy that is simply removed.
      await blobs.write(copy.requests, keptRequests());
      if (index !== lines.length) throw new InvariantError(`part ${n} has fewer requests than lines`);
      if (found === 0) {
        await blobs.delete([copy.requests]);
        kept = lines.length;
        await this.reduce(part, kept, drops);
        return;
      }
      held();
      if (found !== drops.length)
        throw new InvariantError(`part ${n} holds ${found} of its ${drops.length} drops: it was changed`);
      kept = keptLines.length;
      if (kept === 0) {
        await this.reduce(part, 0, drops);
        await blobs.delete([copy.requests, requestsKey, linesKey]);
        return;
      }
      await blobs.write(copy.lines, jsonlChunks(keptLines));
    }
    await blobs.write(requestsKey, blobs.read(copy.requests));
    await blobs.write(linesKey, blobs.read(copy.lines));
    await this.reduce(part, kept, drops);
    await blobs.delete([copy.lines]);
    await blobs.delete([copy.requests]);
  }

  /**
   * Takes the drops out of a part's record, unless it was done before: the record still counts them when
   * it holds `kept` + drops requests, and holds `kept` once reduced.
   */
  private async reduce(part: Part, kept: number, drops: readonly Drop[]): Promise<void> {
    if (part.requests === kept) return;
    if (part.requests !== kept + drops.length)
      throw new InvariantError(
        `part ${part.part} counts ${part.requests} requests, neither ${kept} kept nor ${kept + drops.length} before its drops`,
      );
    const bytes = drops.reduce((sum, d) => sum + d.bytes, 0);
    const tokens = drops.reduce((sum, d) => sum + d.tokens, 0);
    await this.putPart({
      ...part,
      requests: kept,
      bytes: Math.max(0, part.bytes - bytes),
      estimatedTokens: Math.max(0, part.estimatedTokens - tokens),
      ...(kept === 0 ? { status: 'done' as const, bytes: 0, estimatedTokens: 0 } : {}),
    });
    this.deps.log('settle drop', { runId: this.run.runId, part: part.part, dropped: drops.length, kept });
  }

  // --- release ---

  /** Checks the dataset and the cost, then releases every held part; false when the budget ran out first. */
  async release(mayWork: () => boolean): Promise<boolean> {
    const run = this.run;
    if (run.counts.records === 0) {
      throw new DatasetError(
        `The dataset has no records: its ${run.dataset.objects} object(s) hold only blank lines.`,
      );
    }
    const parts = [...(await this.deps.runs.listParts(run.runId))].sort((a, b) => a.part - b.part);
    const expected = this.deps.work.settings.expectedOutputTokens;
    const estimate = costOf(
      parts.map((p) => ({
        model: p.model,
        inputTokens: p.estimatedTokens,
        outputTokens: p.requests * expected,
      })),
    );
    if (estimate !== run.estimatedCostUsd)
      this.run = await updateRun(this.deps.runs, run.runId, (r) =>
        r.estimatedCostUsd === estimate
          ? r
          : { ...r, estimatedCostUsd: estimate, updatedAt: this.deps.now() },
      );
    const max = this.deps.work.settings.maxCostUsd;
    if (max !== undefined && estimate !== null && estimate > max) {
      throw new CostLimitError(
        `The estimated cost of this run is ${usd(estimate)} (${this.run.estimatedTokens} input tokens and ${expected} output tokens a request at batch prices), above the work's maxCostUsd of ${usd(max)}. Nothing was sent to OpenAI.`,
        estimate,
        max,
      );
    }
    // Released a few at a time (a run of many small gzip objects has a part for each), within the budget.
    const held = parts.filter((part) => part.held);
    const released = await forEachLimit(
      held,
      RELEASES_IN_FLIGHT,
      async (part) => {
        const stored = await this.deps.runs.putPart(run.runId, { ...part, held: false });
        if (!stored) throw new ConflictError(`part ${part.part} of run ${run.runId} changed meanwhile`);
      },
      mayWork,
    );
    if (released < held.length) return false;
    this.run = await updateRun(this.deps.runs, run.runId, (r) =>
      r.prepared
        ? r
        : {
            ...r,
            prepared: true,
            status: r.status === 'preparing' ? 'running' : r.status,
            updatedAt: this.deps.now(),
          },
    );
    this.deps.log('settled', {
      runId: run.runId,
      duplicates: this.run.settle?.duplicates ?? 0,
      parts: parts.length,
      estimatedCostUsd: estimate,
    });
    return true;
  }
}

function sameState(a: SettleState, b: SettleState): boolean {
  return (
    a.stage === b.stage && a.partition === b.partition && a.part === b.part && a.duplicates === b.duplicates
  );
}

const dropKey = (id: string, line: number) => `${line}\t${id}`;

/** A drop as its line of a drops file. */
const dropLine = (d: Drop) =>
  JSON.stringify({ part: d.part, line: d.line, id: d.id, shard: d.shard, bytes: d.bytes, tokens: d.tokens });

function compareDrops(a: Drop, b: Drop): number {
  return a.part - b.part || a.line - b.line || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** What a merge of drop files holds of each at most, in all (the pieces it reads them by). */
const MERGE_BYTES = 16 * 1024 * 1024;

/**
 * The drops of every drops file (each sorted by part, then line, then id), merged in that order and
 * gathered by part, from part `fromPart` on: a k-way merge over the files, one drop of each held. Each
 * file is read a piece at a time, and one piece at a time in all ({@link pieceChunks}): a merge of more
 * files than the S3 client has connections would otherwise hold one open a file and wait forever.
 */
export async function* dropsByPart(
  blobs: BlobStore,
  keys: readonly string[],
  fromPart: number,
): AsyncGenerator<{ part: number; drops: Drop[] }> {
  const pieceBytes = Math.min(
    1024 * 1024,
    Math.max(16 * 1024, Math.floor(MERGE_BYTES / Math.max(1, keys.length))),
  );
  const streams = keys.map((key) => textLines(pieceChunks(blobs, key, pieceBytes))[Symbol.asyncIterator]());
  const heap: { drop: Drop; stream: number }[] = [];
  const pull = async (stream: number) => {
    const it = streams[stream];
    if (!it) return;
    for (;;) {
      const next = await it.next();
      if (next.done) return;
      const drop = JSON.parse(next.value) as Drop;
      if (drop.part < fromPart) continue;
      heapPush(heap, { drop, stream });
      return;
    }
  };
  try {
    for (let i = 0; i < streams.length; i++) await pull(i); // one read at a time
    let gathering: { part: number; drops: Drop[] } | null = null;
    let last: Drop | null = null;
    while (heap.length > 0) {
      const { drop, stream } = heapPop(heap);
      await pull(stream);
      if (last && compareDrops(last, drop) === 0) continue; // the same drop in two files: taken once
      last = drop;
      if (gathering && gathering.part !== drop.part) {
        yield gathering;
        gathering = null;
      }
      gathering ??= { part: drop.part, drops: [] };
      gathering.drops.push(drop);
    }
    if (gathering) yield gathering;
  } finally {
    await Promise.all(streams.map((s) => s.return?.(undefined)));
  }
}

type HeapItem = { drop: Drop; stream: number };

function heapPush(heap: HeapItem[], item: HeapItem): void {
  heap.push(item);
  let i = heap.length - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (compareDrops((heap[parent] as HeapItem).drop, item.drop) <= 0) break;
    heap[i] = heap[parent] as HeapItem;
    i = parent;
  }
  heap[i] = item;
}

function heapPop(heap: HeapItem[]): HeapItem {
  const top = heap[0] as HeapItem;
  const last = heap.pop() as HeapItem;
  if (heap.length === 0) return top;
  let i = 0;
  for (;;) {
    const left = 2 * i + 1;
    const right = left + 1;
    let smallest = i;
    const at = (k: number) => (k === i ? last : (heap[k] as HeapItem)).drop;
    if (left < heap.length && compareDrops(at(left), at(smallest)) < 0) smallest = left;
    if (right < heap.length && compareDrops(at(right), at(smallest)) < 0) smallest = right;
    if (smallest === i) break;
    heap[i] = heap[smallest] as HeapItem;
    i = smallest;
  }
  heap[i] = last;
  return top;
}

/** The text lines of a byte stream (UTF-8, newline-separated), without their newline; no empty last one. */
export async function* textLines(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let pending = '';
  for await (const chunk of chunks) {
    pending += decoder.decode(chunk, { stream: true });
    let from = 0;
    let newline = pending.indexOf('\n');
    while (newline !== -1) {
      yield pending.slice(from, newline);
      from = newline + 1;
      newline = pending.indexOf('\n', from);
    }
    pending = pending.slice(from);
  }
  pending += decoder.decode();
  if (pending.length > 0) yield pending;
}

/**
 * The bytes of an object, read a piece of about `pieceBytes` at a time from where the last piece ended,
 * with no read left open between pieces (each read is closed once its piece is taken).
 */
export async function* pieceChunks(
  blobs: BlobStore,
  key: string,
  pieceBytes: number,
): AsyncGenerator<Uint8Array> {
  let offset = 0;
  for (;;) {
    const chunks: Uint8Array[] = [];
    let got = 0;
    const reader = blobs.read(key, offset, undefined, offset + pieceBytes)[Symbol.asyncIterator]();
    try {
      while (got < pieceBytes) {
        const next = await reader.next();
        if (next.done) break;
        chunks.push(next.value);
        got += next.value.length;
      }
    } finally {
      await reader.return?.(undefined);
    }
    if (got === 0) return;
    offset += got;
    yield* chunks;
  }
}

/**
 * Lines as an object's body: a few hundred a chunk, and no more than about CHUNK_CHARS characters (a part
 * of image requests holds lines of a megabyte or more: 256 of them, and their joined copy, were more than
 * Settle's heap).
 */
export async function* jsonlChunks(
  lines: AsyncIterable<string> | Iterable<string>,
): AsyncGenerator<Uint8Array> {
  const batch: string[] = [];
  let chars = 0;
  for await (const line of lines) {
    batch.push(`${line}\n`);
    chars += line.length + 1;
    if (batch.length >= 256 || chars >= CHUNK_CHARS) {
      yield Buffer.from(batch.splice(0).join(''));
      chars = 0;
    }
  }
  if (batch.length > 0) yield Buffer.from(batch.join(''));
}

/** The most characters jsonlChunks joins into one chunk (one longer line is a chunk of its own). */
export const CHUNK_CHARS = 1024 * 1024;

/**
 * The entries of a part's lines file (its `.entries`: a request's dataset line and custom_id, see
 * `partLine`; or the dataset line alone in a `.lines` from before), as written, in memory: tens of bytes a
 * request.
 */
async function readPartLines(blobs: BlobStore, key: string): Promise<string[]> {
  const lines: string[] = [];
  for await (const line of textLines(blobs.read(key))) if (line) lines.push(line);
  return lines;
}

/** Part records Settle's release writes at once. */
const RELEASES_IN_FLIGHT = 16;

/** Duplicates whose error lines are made at once (see writeDuplicates). */
const ERRORS_AHEAD = 16;
