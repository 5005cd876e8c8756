import { addCounts, withDuplicates, zeroCounts } from '../core/accounting';
import { DatasetError, InvariantError } from '../core/errors';
import { decompressed, type LinePosition } from '../core/lines';
import {
  LineIds,
  type ObjectSource,
  type PrepareInput,
  type PrepareResult,
  type PrepareStart,
  prepareDataset,
} from '../core/prepare';
import { type LaneCheckpoint, newPart, type Run, runKeys } from '../core/run';
import { countNewlines, firstLineStart, type RangeTally, throughLineAt } from '../core/shard-reader';
import {
  firstLineOf,
  type ListedObject,
  nextLaneShard,
  type PackStarts,
  type Shard,
  shardPart,
} from '../core/shards';
import type { StepDeps } from './deps';
import { runOf } from './runs';
import { settleFirstShard } from './settle';
import {
  deleteIdFilesFrom,
  LazyJsonl,
  laneCheckpoint,
  packObjects,
  planShard,
  readIfThere,
  StoredIdFiles,
  StoredParts,
  writeAll,
} from './storage';
import { sendReleased } from './tick';

/**
 * The step budgets a gzip object of its own may take to be inflated, in one call (12 minutes at the
 * default budget of 4): the Prepare function's timeout (15 minutes) is above it.
 */
export const INFLATE_BUDGETS = 3;

/** A size as a person reads it: 1.5 GiB, 300.2 MiB, 12.0 KiB. */
function sizeOf(bytes: number): string {
  const [unit, scale] =
    bytes >= 1024 ** 3 ? ['GiB', 1024 ** 3] : bytes >= 1024 ** 2 ? ['MiB', 1024 ** 2] : ['KiB', 1024];
  return `${(bytes / scale).toFixed(1)} ${unit}`;
}

/** A lane's checkpoint before its first step: its first shard, nothing read. */
export function freshLane(lane: number): LaneCheckpoint {
  return {
    lane,
    shard: lane,
    position: null,
    starts: [],
    nextPart: 0,
    inflated: false,
    counts: zeroCounts(),
    estimatedTokens: 0,
    done: false,
    firstShardSettled: false,
    firstPartsSent: false,
    firstShardLeft: false,
  };
}

/**
 * One step of a prepare lane: lane L of a run prepares shards L, L + lanes, L + 2 * lanes, ... into held
 * parts (numbered per shard), for as long as its time budget allows (at least one record), going on to
 * its next shard within the step when time remains. It records an id entry for every request placed (the
 * id files Settle reads to find ids used more than once), writes refused lines to errors named by the
 * shard and the step's first line, and writes its checkpoint (`runKeys.lane`) last; the state machine
 * calls it again until `done`. A step that dies is run again from that checkpoint and rewrites the same
 * files. It never writes the run record: lanes run at once, and Settle sums their counts.
 */
export async function prepare<R>(
  deps: StepDeps<R>,
  /** `groupEntries`: the most ids shard 0 may hold to be settled on its own (tests; see settleFirstShard). */
  input: { runId: string; lane: number; groupEntries?: number },
): Promise<{ done: boolean }> {
  const started = deps.now();
  const outOfTime = () => deps.now() - started > deps.budgetMs;
  // A step reads at least one record (or counts one range) before it looks at the clock.
  let progressed = false;
  const shouldPause = () => {
    const pause = progressed && outOfTime();
    progressed = true;
    return pause;
  };
  const run = await runOf(deps.runs, input.runId);
  const { dataset } = run;
  if (input.lane >= dataset.shards) return { done: true };
  const keys = runKeys(run.runId);
  let cp = (await laneCheckpoint(deps.blobs, run.runId, input.lane)) ?? freshLane(input.lane);
  // Shard 0 is settled on its own once prepared, so that its parts are sent while the rest prepares;
  // not when a cost limit must see the whole dataset first, nor when shard 0 is the whole dataset.
  const early = input.lane === 0 && dataset.shards > 1 && deps.work.settings.maxCostUsd === undefined;
  const firstShardDue = (c: LaneCheckpoint) =>
    early && !c.firstShardSettled && !c.firstShardLeft && (c.done || c.shard !== 0);
  // Shard 0's parts are sent at the start of the step after the one that settled it, on a fresh budget.
  const firstPartsDue = (c: LaneCheckpoint) => early && c.firstShardSettled && !c.firstPartsSent;
  if (firstPartsDue(cp)) {
    let sent = 0;
    await sendReleased(deps, run.runId, () => sent++ === 0 || !outOfTime());
    cp = { ...cp, firstPartsSent: true };
    await writeAll(deps.blobs, keys.lane(input.lane), JSON.stringify(cp));
    if (cp.done || outOfTime()) return { done: cp.done };
  }
  // Shard 0 is settled at the start of the step after the one that prepared it, on a fresh budget: all of
  // it in one go (up to a Settle group's ids), which the end of a spent step may not leave time for.
  if (firstShardDue(cp)) return { done: await settleFirst(cp) };
  if (cp.done) return { done: true };
  const lane = new Lane(deps, run, started + (deps.inflateMs ?? INFLATE_BUDGETS * deps.budgetMs));
  /** Inflated copies of gzip shards this step finished, removed once the checkpoint no longer needs them. */
  const finished: string[] = [];

  while (!cp.done) {
    if (progressed && outOfTime()) break;
    const shard = await lane.shard(cp.shard);
    // A gzip object of its own is inflated at the start of a call, whatever the call did before: the
    // inflation may take the whole call.
    if (shard.gzip && !cp.inflated && progressed) break;
    const step = await lane.step(shard, cp, shouldPause);
    if (step.kind === 'paused') {
      cp = step.checkpoint;
      break;
    }
    const next = nextLaneShard(cp.shard, dataset.lanes, dataset.shards);
    if (shard.gzip) finished.push(keys.inflated(shard.shard));
    cp = {
      ...step.checkpoint,
      shard: next ?? cp.shard,
      position: null,
      starts: [],
      nextPart: 0,
      inflated: false,
      done: next === null,
    };
    // Shard 0 done: the step ends here, and the next one settles it.
    if (firstShardDue(cp)) break;
  }
  await writeAll(deps.blobs, keys.lane(input.lane), JSON.stringify(cp));
  if (finished.length > 0) await deps.blobs.delete(finished);
  return { done: cp.done && !firstShardDue(cp) };

  /** Settles shard 0 on its own, or leaves it to Settle; gives whether the lane is done. */
  async function settleFirst(at: LaneCheckpoint): Promise<boolean> {
    const settled = await settleFirstShard(deps, run, undefined, input.groupEntries);
    const next = settled
      ? {
          ...at,
          counts: withDuplicates(at.counts, settled.duplicates),
          estimatedTokens: Math.max(0, at.estimatedTokens - settled.tokens),
          firstShardSettled: true,
        }
      : { ...at, firstShardLeft: true };
    await writeAll(deps.blobs, keys.lane(input.lane), JSON.stringify(next));
    // Settled: the next step sends shard 0's parts, so the lane is not done before.
    return settled ? false : next.done;
  }
}

/** An object's first line. */
const START: LinePosition = { line: 1, offset: 0 };

/** Objects of a pack whose GET is sent before the lane reads them (see packStep). */
const OBJECTS_AHEAD = 8;

/** A read whose first chunk is asked for at once; read it once, or close it. */
interface Started extends AsyncIterable<Uint8Array> {
  close(): Promise<void>;
}

/** Starts a read: its first chunk is asked for now, and given first when it is read. */
function started(source: AsyncIterable<Uint8Array>): Started {
  const iterator = source[Symbol.asyncIterator]();
  const first = iterator.next();
  first.catch(() => {}); // thrown where it is read
  let taken = false;
  return {
    async *[Symbol.asyncIterator]() {
      taken = true;
      try {
        for (let chunk = await first; !chunk.done; chunk = await iterator.next()) yield chunk.value;
      } finally {
        await iterator.return?.();
      }
    },
    async close() {
      if (taken) return;
      taken = true;
      await first.catch(() => {});
      await iterator.return?.();
    },
  };
}

/** How a shard's step ended: the shard is finished, or the step paused (the checkpoint says where). */
type ShardStep = { kind: 'finished' | 'paused'; checkpoint: LaneCheckpoint };

/** A lane's access to its run's plan, dataset and state objects. */
class Lane<R> {
  private readonly keys;
  private readonly runId: string;

  constructor(
    private readonly deps: StepDeps<R>,
    private readonly run: Run,
    /** When an inflation this call makes must be done by (see inflate). */
    private readonly inflateBy: number,
  ) {
    this.runId = run.runId;
    this.keys = runKeys(run.runId);
  }

  /** Shard `n` of the plan. */
  shard(n: number): Promise<Shard> {
    return planShard(this.deps.blobs, this.run, n);
  }

  /** A stored newline count (a decimal number), or null. */
  private async storedCount(key: string): Promise<number | null> {
    const bytes = await readIfThere(this.deps.blobs, key);
    if (bytes === null) return null;
    const text = Buffer.from(bytes).toString('utf8');
    // Digits only: an empty object would read as 0 (Number('')) and number the shard's lines from 1.
    if (!/^\d+$/.test(text)) throw new InvariantError(`bad newline count at ${key}: ${JSON.stringify(text)}`);
    return Number(text);
  }

  private async storeCount(key: string, count: number): Promise<void> {
    await writeAll(this.deps.blobs, key, String(count));
  }

  /**
   * The newline bytes in [0, shard.start) of the shard's object: stored, or from the nearest earlier shard
   * of the object whose count is stored (or that starts at 0) plus the newlines of each range in between.
   * Those ranges are taken from the nearest back, each count stored as found and looked for before
   * counting: lanes start side by side, and lane k counts range k-1 while lane k-1 counts range k-2, so
   * that each range is counted about once, not once a lane after it. Null when the time ran out first
   * (what was counted is stored).
   */
  private async newlinesBefore(shard: Shard, shouldPause: () => boolean): Promise<number | null> {
    if (shard.start === 0) return 0;
    const own = await this.storedCount(this.keys.newlinesBefore(shard.shard));
    if (own !== null) return own;
    const between: Shard[] = [];
    let base = 0;
    for (let n = shard.shard - 1; ; n--) {
      const earlier = await this.shard(n);
      if (earlier.key !== shard.key)
        throw new InvariantError(`shard ${shard.shard} has no start in its object`);
      between.push(earlier);
      if (earlier.start === 0) break;
      const count = await this.storedCount(this.keys.newlinesBefore(n));
      if (count !== null) {
        base = count;
        break;
      }
    }
    const counts: number[] = [];
    for (const range of between) {
      let count = await this.storedCount(this.keys.newlinesIn(range.shard));
      if (count === null) {
        if (shouldPause()) return null;
        count = await countNewlines(
          this.deps.blobs.read(range.key, range.start, range.etag, range.end),
          range.start,
          range.end,
        );
        await this.storeCount(this.keys.newlinesIn(range.shard), count);
      }
      counts.push(count);
    }
    // Nearest first: add them up from the base, storing the count before each shard on the way.
    for (let i = between.length - 1; i >= 0; i--) {
      const range = between[i];
      if (!range) continue;
      base += counts[i] ?? 0;
      await this.storeCount(this.keys.newlinesBefore(range.shard + 1), base);
    }
    return base;
  }

  /**
   * Inflates a gzip shard's object, whole, into its copy (one read of the object), in one call: it cannot
   * stop midway and go on in the next, so a call starts with it (see the lane's loop) and may take until
   * `inflateBy` (INFLATE_BUDGETS step budgets from the call's start, which the Prepare function's timeout
   * leaves room for). An object that takes longer is a DatasetError that says how large a gzip object is
   * inflated in that time, rather than a call the timeout kills, retried in vain.
   */
  private async inflate(shard: Shard): Promise<void> {
    const { deps } = this;
    const { inflateBy } = this;
    const started = deps.now();
    let read = 0;
    let inflated = 0;
    async function* counted(): AsyncGenerator<Uint8Array> {
      for await (const chunk of deps.blobs.read(shard.key, 0, shard.etag)) {
        read += chunk.length;
        yield chunk;
      }
    }
    const { chunks } = await decompressed(counted(), shard.key);
    async function* timed(): AsyncGenerator<Uint8Array> {
      for await (const chunk of chunks) {
        const now = deps.now();
        if (now > inflateBy) {
          const minutes = Math.round((now - started) / 60_000);
          throw new DatasetError(
            `s3://${deps.bucket}/${shard.key} is a gzip object of ${sizeOf(shard.size)}, which a Prepare call inflates whole before it reads its lines: in ${minutes} minutes it inflated ${sizeOf(read)} of it (${sizeOf(inflated)} of lines) and was not done. Split it into gzip objects of at most about ${sizeOf(read / 2)} under one prefix and start the run on the prefix (they are prepared side by side), or upload it uncompressed. (Inflating may also have been slow for a while: \`openai-batch resume\` tries again.)`,
          );
        }
        inflated += chunk.length;
        yield chunk;
      }
    }
    await deps.blobs.write(this.keys.inflated(shard.shard), timed());
  }

  /** Prepares a shard from its checkpoint, until it is finished or the step must pause. */
  async step(shard: Shard, checkpoint: LaneCheckpoint, shouldPause: () => boolean): Promise<ShardStep> {
    if (shard.objects > 1) return this.packStep(shard, checkpoint, shouldPause);
    let cp = checkpoint;
    const tally: RangeTally = { newlinesBeforeEnd: 0, stoppedAt: null };
    let source: AsyncIterable<Uint8Array>;
    let position: LinePosition;
    if (shard.gzip) {
      if (!cp.inflated) {
        await this.inflate(shard);
        cp = { ...cp, inflated: true };
        // Kept at once: a step run again reads the copy, not the object.
        await writeAll(this.deps.blobs, this.keys.lane(cp.lane), JSON.stringify(cp));
      }
      position = cp.position ?? START;
      const copy = this.keys.inflated(shard.shard);
      source = throughLineAt(this.deps.blobs.read(copy, position.offset), position.offset, Infinity, tally);
    } else if (cp.position) {
      position = cp.position;
      source = throughLineAt(
        this.deps.blobs.read(shard.key, position.offset, shard.etag),
        position.offset,
        shard.end,
        tally,
      );
    } else if (shard.start === 0) {
      position = START;
      source = throughLineAt(this.deps.blobs.read(shard.key, 0, shard.etag), 0, shard.end, tally);
    } else {
      const before = await this.newlinesBefore(shard, shouldPause);
      if (before === null) return { kind: 'paused', checkpoint: cp };
      const found = await firstLineStart(
        this.deps.blobs.read(shard.key, shard.start - 1, shard.etag),
        shard.start,
        shard.end,
      );
      if (!found.owned) {
        await this.storeNext(shard, before + found.newlines);
        return { kind: 'finished', checkpoint: cp };
      }
      position = { line: firstLineOf(shard, before, found.previousByteIsNewline), offset: found.offset };
      source = throughLineAt(found.rest, found.offset, shard.end, tally);
    }

    const { result, checkpoint: after } = await this.prepareFrom(shard, cp, position.line, {
      source,
      start: { position },
      shouldPause,
      // Register told gzip from the object's first bytes (a gzip shard is read through its inflated
      // copy); a range or a resumed step starts mid-object, where gzip's magic number is a line's bytes.
      detectGzip: false,
      object: shard.key,
    });
    cp = after;
    if (!result.done) return { kind: 'paused', checkpoint: cp };
    // The newlines of [0, end) number the next shard's lines, when it is of the same object.
    if (!shard.gzip && tally.stoppedAt !== null)
      await this.storeNext(shard, position.line - 1 + tally.newlinesBeforeEnd);
    return { kind: 'finished', checkpoint: cp };
  }

  /**
   * Prepares a pack of objects (see core/shards.ts) from its checkpoint: its objects one after the other,
   * from the one and the position the checkpoint is at, into the same parts. The checkpoint keeps where
   * each object reached so far starts in the pack's lines; once the pack is finished, that table is stored
   * (`runKeys.packStarts`) for the steps that name a request's object and line from a pack line.
   */
  private async packStep(
    shard: Shard,
    checkpoint: LaneCheckpoint,
    shouldPause: () => boolean,
  ): Promise<ShardStep> {
    const objects = await packObjects(this.deps.blobs, this.run, shard);
    const starts = checkpoint.starts.length > 0 ? [...checkpoint.starts] : [0];
    const at = starts.length - 1;
    const lineBase = starts[at] ?? 0;
    const position = checkpoint.position ?? START;
    const { blobs } = this.deps;
    // Each object's GET is sent a few objects ahead (its first chunk waits), so that a pack of many
    // small objects is not read at one request's latency an object.
    async function* sources(): AsyncGenerator<ObjectSource> {
      const ahead: { object: ListedObject; from: LinePosition; source: Started }[] = [];
      let next = at;
      const fill = () => {
        while (ahead.length < OBJECTS_AHEAD && next < objects.length) {
          const object = objects[next];
          if (!object) break;
          const from = next === at ? position : START;
          const offset = object.gzip ? 0 : from.offset;
          ahead.push({ object, from, source: started(blobs.read(object.key, offset, object.etag)) });
          next += 1;
        }
      };
      try {
        fill();
        for (let open = ahead.shift(); open; open = ahead.shift()) {
          fill();
          const { object, from } = open;
          if (!object.gzip) {
            yield { source: open.source, object: object.key, position: from };
            continue;
          }
          // A gzip object is inflated as it is read, from its start: a step that stopped inside it
          // passes over the lines it read (the object is small: see MAX_PACKED_GZIP_BYTES).
          const { chunks } = await decompressed(open.source, object.key);
          yield { source: chunks, object: object.key, position: START, skipLines: from.line - 1 };
        }
      } finally {
        await Promise.all(ahead.map((open) => open.source.close()));
      }
    }
    const { result, checkpoint: cp } = await this.prepareFrom(shard, checkpoint, lineBase + position.line, {
      sources: sources(),
      start: { lineBase },
      shouldPause,
    });
    for (const lines of result.finished) starts.push((starts.at(-1) ?? 0) + lines);
    if (!result.done) return { kind: 'paused', checkpoint: { ...cp, starts } };
    const packStarts: PackStarts = { starts: starts.slice(0, objects.length) };
    await writeAll(this.deps.blobs, this.keys.packStarts(shard.shard), JSON.stringify(packStarts));
    return { kind: 'finished', checkpoint: cp };
  }

  /**
   * Runs prepareDataset over a shard from the checkpoint, the step starting at line `startLine` of the
   * shard (what its id and error files are named by), and adds the parts it made to the run; gives its
   * result and the checkpoint moved on past it.
   */
  private async prepareFrom(
    shard: Shard,
    checkpoint: LaneCheckpoint,
    startLine: number,
    read: Omit<PrepareInput<R>, 'work' | 'ids' | 'parts' | 'errors' | 'start'> & {
      start: Omit<PrepareStart, 'firstPart'>;
    },
  ): Promise<{ result: PrepareResult; checkpoint: LaneCheckpoint }> {
    let cp = checkpoint;
    await deleteIdFilesFrom(this.deps.blobs, this.runId, shard.shard, startLine);
    const ids = new StoredIdFiles(
      this.deps.blobs,
      this.runId,
      shard.shard,
      startLine,
      this.run.dataset.partitions,
    );
    const parts = new StoredParts(this.deps.blobs, this.runId, (part, request) => ids.place(part, request));
    const errors = new LazyJsonl(this.deps.blobs, this.keys.prepareErrors(shard.shard, startLine));
    const result = await prepareDataset({
      ...read,
      work: this.deps.work,
      ids: new LineIds(),
      parts,
      errors,
      start: { ...read.start, firstPart: shardPart(shard.shard, cp.nextPart) },
    });
    await errors.close();
    await ids.close();
    // A shard's parts keep to its span of numbers (this throws past it).
    if (result.parts.length > 0) shardPart(shard.shard, cp.nextPart + result.parts.length - 1);
    await this.deps.runs.addParts(
      this.runId,
      result.parts.map((p) => ({
        ...newPart({
          part: p.part,
          generation: 0,
          model: p.model,
          requests: p.requests,
          bytes: p.bytes,
          estimatedTokens: p.estimatedTokens,
        }),
        held: true,
      })),
    );
    cp = {
      ...cp,
      position: result.next,
      nextPart: cp.nextPart + result.parts.length,
      counts: addCounts(cp.counts, result.counts),
      estimatedTokens: cp.estimatedTokens + result.parts.reduce((n, p) => n + p.estimatedTokens, 0),
    };
    this.deps.log('prepare step', {
      runId: this.runId,
      lane: cp.lane,
      shard: shard.shard,
      fromLine: startLine,
      // In a pack: where it stopped in the object it stopped in, after the objects it finished.
      toLine: result.next.line,
      ...(read.sources ? { objectsFinished: result.finished.length } : {}),
      records: result.counts.records,
      parts: result.parts.length,
      idFiles: ids.files,
    });
    return { result, checkpoint: cp };
  }

  /** Stores the newline count of [0, shard.end), the next shard's start, when that shard is of the same object. */
  private async storeNext(shard: Shard, newlines: number): Promise<void> {
    if (shard.shard + 1 < this.run.dataset.shards && shard.end < shard.size)
      await this.storeCount(this.keys.newlinesBefore(shard.shard + 1), newlines);
  }
}
