import { LineWriter } from '../core/channel';
import type { PartSummary } from '../core/chunker';
import { partLine } from '../core/collect';
import { InvariantError } from '../core/errors';
import { type IdEntry, IdFileBuilder } from '../core/id-files';
import { type BlobStore, readRange } from '../core/ports';
import type { PartSink, RecordSink } from '../core/prepare';
import type { PreparedRequest } from '../core/requests';
import { type LaneCheckpoint, LaneCheckpointSchema, type Part, type Run, runKeys } from '../core/run';
import {
  type ListedObject,
  lineInPack,
  objectListCodec,
  PackStartsSchema,
  planCodec,
  type Shard,
  shardOfPart,
} from '../core/shards';

/**
 * A JSONL object in the store, opened on its first line. One that got no line is removed on close rather
 * than left as it was: an earlier attempt of the same step (one that crashed, and read further) may have
 * written it, and its lines must not stay beside the ones the next step writes. (An S3 DELETE costs
 * nothing, and readers never see an empty file.)
 */
export class LazyJsonl implements RecordSink {
  private writer: LineWriter | null = null;

  constructor(
    private readonly blobs: BlobStore,
    private readonly key: string,
  ) {}

  /** Lines written so far. */
  get lines(): number {
    return this.writer?.lines ?? 0;
  }

  /** Appends a line that is already JSON (the writer's own promise: no async wrapper on the per-line path). */
  write(line: string): Promise<void> {
    return this.opened().write(line);
  }

  /** Appends a line that is already JSON; a promise only when there is something to wait for. */
  add(line: string): Promise<void> | undefined {
    return this.opened().add(line);
  }

  private opened(): LineWriter {
    this.writer ??= new LineWriter((body) => this.blobs.write(this.key, body));
    return this.writer;
  }

  async close(): Promise<void> {
    if (this.writer) await this.writer.close();
    else await this.blobs.delete([this.key]);
  }
}

/**
 * The key of a part's lines file: its `.entries` (each request's dataset line and custom_id), or the
 * `.lines` of a part written before those (dataset lines only) where that is the one there is; null when
 * it has neither.
 */
export async function existingPartLinesKey(
  blobs: BlobStore,
  runId: string,
  part: number,
): Promise<string | null> {
  const keys = runKeys(runId);
  if (await blobs.head(keys.entries(part))) return keys.entries(part);
  return (await blobs.head(keys.lines(part))) ? keys.lines(part) : null;
}

/** {@link existingPartLinesKey}, or the `.entries` key when there is neither (a read of it names it missing). */
export async function partLinesKey(blobs: BlobStore, runId: string, part: number): Promise<string> {
  return (await existingPartLinesKey(blobs, runId, part)) ?? runKeys(runId).entries(part);
}

/**
 * Part files in the store: each part's request lines, and beside them each request's dataset line and
 * custom_id (`partLine`), so that collect joins results to lines without reading the requests again.
 * `placed`, when given, is told of each request written (prepare records an id entry for it).
 */
export class StoredParts implements PartSink {
  private readonly open = new Map<number, { requests: LazyJsonl; lines: LazyJsonl }>();

  constructor(
    private readonly blobs: BlobStore,
    private readonly runId: string,
    private readonly placed?: (part: number, request: PreparedRequest) => Promise<void> | undefined,
  ) {}

  private files(part: number) {
    let files = this.open.get(part);
    if (!files) {
      const keys = runKeys(this.runId);
      files = {
        requests: new LazyJsonl(this.blobs, keys.requests(part)),
        lines: new LazyJsonl(this.blobs, keys.entries(part)),
      };
      this.open.set(part, files);
    }
    return files;
  }

  /**
   * Appends a request, its dataset line, and tells `placed`. Called once a request on the per-record path:
   * it returns a promise only when one of them has something to wait for (a chunk handed on), and then
   * goes on, in the same order, once that is done.
   */
  write(part: number, request: PreparedRequest): Promise<void> | undefined {
    const files = this.files(part);
    const sending = files.requests.add(request.json);
    if (sending) return this.writeAfter(sending, files, part, request);
    const lining = files.lines.add(partLine(request.line, request.customId));
    if (lining) return this.placeAfter(lining, part, request);
    return this.placed?.(part, request);
  }

  private async writeAfter(
    sending: Promise<void>,
    files: { lines: LazyJsonl },
    part: number,
    request: PreparedRequest,
  ): Promise<void> {
    await sending;
    await files.lines.write(partLine(request.line, request.customId));
    await this.placed?.(part, request);
  }

  private async placeAfter(lining: Promise<void>, part: number, request: PreparedRequest): Promise<void> {
    await lining;
    await this.placed?.(part, request);
  }

  /** Appends a request that is sent again (a resubmission part). */
  async writeRaw(part: number, json: string, line: number, customId: string): Promise<void> {
    const files = this.files(part);
    await files.requests.write(json);
    await files.lines.write(partLine(line, customId));
  }

  async close(summary: Pick<PartSummary, 'part'>): Promise<void> {
    const files = this.open.get(summary.part);
    this.open.delete(summary.part);
    await Promise.all([files?.requests.close(), files?.lines.close()]);
  }
}

/**
 * The id entries of one prepare step of a shard (see core/id-files.ts), written as id files named by the
 * shard and the step's first line, each with its `.idx`: a file whenever `flushAt` entries are held, and
 * one with the rest on close. Holds at most `flushAt` entries.
 */
export class StoredIdFiles {
  private readonly builder: IdFileBuilder;
  private chunk = 0;

  constructor(
    private readonly blobs: BlobStore,
    private readonly runId: string,
    private readonly shard: number,
    private readonly line: number,
    partitions: number,
    private readonly flushAt = ID_FILE_ENTRIES,
  ) {
    this.builder = new IdFileBuilder(partitions);
  }

  /** Id files written so far. */
  get files(): number {
    return this.chunk;
  }

  /** Adds the entry of a request placed in `part`; a promise only when it fills an id file. */
  place(part: number, request: PreparedRequest): Promise<void> | undefined {
    return this.add({
      id: request.customId,
      shard: this.shard,
      line: request.line,
      part,
      bytes: request.bytes,
      tokens: request.estimatedTokens,
    });
  }

  /** Adds an entry; a promise only when it fills an id file, which is written then. */
  add(entry: IdEntry): Promise<void> | undefined {
    this.builder.add(entry);
    return this.builder.size >= this.flushAt ? this.flush() : undefined;
  }

  /** Writes what is held. */
  async close(): Promise<void> {
    if (this.builder.size > 0) await this.flush();
  }

  private async flush(): Promise<void> {
    const key = runKeys(this.runId).idFile(this.shard, this.line, this.chunk);
    this.chunk += 1;
    const { body, index } = this.builder.take();
    await this.blobs.write(key, body);
    await writeAll(this.blobs, `${key}.idx`, JSON.stringify(index)); // its index (core/id-files.ts)
  }
}

/** Id entries an id file holds at most (about 20 MiB of them in memory). */
export const ID_FILE_ENTRIES = 262_144;

/**
 * Removes the id files of a shard's prepare steps that started at `fromLine` or after (and their
 * indexes): what an attempt of a step that crashed wrote, before the step is run again.
 */
export async function deleteIdFilesFrom(
  blobs: BlobStore,
  runId: string,
  shard: number,
  fromLine: number,
): Promise<number> {
  const keys = runKeys(runId);
  const sample = keys.idFile(shard, 0, 0);
  const prefix = sample.slice(0, sample.indexOf('-', keys.idFiles.length) + 1);
  const stale: string[] = [];
  for await (const info of blobs.list(prefix)) {
    const line = Number(info.key.slice(prefix.length).split('-')[0]);
    if (Number.isInteger(line) && line >= fromLine) stale.push(info.key);
  }
  for (let i = 0; i < stale.length; i += 1000) await blobs.delete(stale.slice(i, i + 1000));
  return stale.length;
}

/** A small object's bytes, or null when there is no such object. */
export async function readIfThere(blobs: BlobStore, key: string): Promise<Uint8Array | null> {
  if ((await blobs.head(key)) === null) return null;
  return readAll(blobs, key);
}

/** An object's bytes, whole: for the small state objects (checkpoints, counts) only. */
export async function readAll(blobs: BlobStore, key: string): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of blobs.read(key)) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** Stores bytes as one object. */
export async function writeAll(blobs: BlobStore, key: string, bytes: Uint8Array | string): Promise<void> {
  async function* one(): AsyncGenerator<Uint8Array> {
    yield typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
  }
  await blobs.write(key, one());
}

/** Shard `n` of a run's plan, by one ranged read of its fixed-width line. */
export async function planShard(
  blobs: BlobStore,
  run: Pick<Run, 'runId' | 'dataset'>,
  n: number,
): Promise<Shard> {
  if (n < 0 || n >= run.dataset.shards) throw new InvariantError(`run ${run.runId} has no shard ${n}`);
  const width = run.dataset.planWidth;
  const shard = planCodec.decode(await readRange(blobs, runKeys(run.runId).plan, n * width, width));
  if (shard.shard !== n)
    throw new InvariantError(`the plan of run ${run.runId} has shard ${shard.shard} at ${n}`);
  return shard;
}

/**
 * The shard a part's records come from: a prepared part's, from its number; a resubmission part's, as
 * kept when it was made (null where it was made before that was kept).
 */
export function shardOf(run: Pick<Run, 'dataset'>, part: Pick<Part, 'part' | 'originShard'>): number | null {
  if (part.originShard !== null) return part.originShard;
  const shard = shardOfPart(part.part);
  return shard < run.dataset.shards ? shard : null;
}

/** The objects of a pack, from the run's object list: one ranged GET. */
export async function packObjects(
  blobs: BlobStore,
  run: Pick<Run, 'runId' | 'dataset'>,
  shard: Pick<Shard, 'shard' | 'object' | 'objects'>,
): Promise<ListedObject[]> {
  const width = run.dataset.objectWidth;
  if (width === 0)
    throw new InvariantError(`run ${run.runId} has a pack (shard ${shard.shard}) but no object list`);
  const bytes = await readRange(
    blobs,
    runKeys(run.runId).objectList,
    shard.object * width,
    shard.objects * width,
  );
  const objects = objectListCodec.decode(bytes, width);
  if (objects.length !== shard.objects)
    throw new InvariantError(
      `the object list of run ${run.runId} is short of shard ${shard.shard}'s objects`,
    );
  return objects;
}

/** A dataset line as a user reads it: the object (its key) and its line in that object; nulls where not known. */
export interface DatasetPlace {
  readonly object: string | null;
  readonly line: number | null;
}

/**
 * What a ShardPlaces keeps of the shards it looked up, counted as their keys' and line starts' bytes: a
 * pack's are up to 1,000 keys. 32 MiB holds every place of 100,000 objects with keys of 300 bytes.
 */
const PLACES_CACHED_BYTES = 32 * 1024 * 1024;

/** What a kept shard costs besides its keys and starts (the entry, the locator and its closure), about. */
const PLACE_BYTES = 256;

/** A shard whose lines cannot be placed (its plan or pack files are gone): no object, no line. */
const UNPLACED: ShardLocator = { kind: 'pack', place: () => ({ object: null, line: null }) };

/**
 * How a shard's lines map to the dataset: a shard of one object numbers its lines as that object does; a
 * pack numbers them across its objects (see core/shards.ts), and `place` gives the object and its own line.
 */
export type ShardLocator =
  | { readonly kind: 'object'; readonly key: string | null }
  | { readonly kind: 'pack'; readonly place: (line: number) => DatasetPlace };

/** A shard's locator as kept, with what it holds in bytes (0 until it is loaded). */
interface KeptLocator {
  readonly locator: Promise<ShardLocator | null>;
  bytes: number;
}

/**
 * Where shards' lines are in the dataset: a shard line (how the run's own files number them) as the object
 * and its own line. Reads each shard's plan line, and a pack's starts and object list, once while it is
 * kept: the shards used last, up to PLACES_CACHED_BYTES (Settle names the first use of each duplicate id,
 * which may be in any shard, over and over). A shard whose plan or pack files are gone (a failed run's
 * expired files) gives nulls, never a wrong place.
 */
export class ShardPlaces {
  /** The shards looked up, the one used last at the end (a Map keeps the order keys were set in). */
  private readonly shards = new Map<number, KeptLocator>();
  private bytes = 0;

  constructor(
    private readonly blobs: BlobStore,
    private readonly run: Pick<Run, 'runId' | 'dataset'>,
    private readonly budget = PLACES_CACHED_BYTES,
  ) {}

  /** The place of line `line` of shard `shard`. */
  async of(shard: number | null, line: number | null): Promise<DatasetPlace> {
    const located = shard === null ? null : await this.locator(shard);
    if (!located) return { object: null, line: null };
    if (located.kind === 'object') return { object: located.key, line };
    return line === null ? { object: null, line: null } : located.place(line);
  }

  /** How shard `shard`'s lines map to the dataset; null where that is not known. */
  locator(shard: number): Promise<ShardLocator | null> {
    const kept = this.shards.get(shard);
    if (kept) {
      // Used now: moved to the end, the last one dropped.
      this.shards.delete(shard);
      this.shards.set(shard, kept);
      return kept.locator;
    }
    const loading: KeptLocator = {
      bytes: 0,
      locator: this.load(shard).then((loaded) => {
        if (this.shards.get(shard) === loading) {
          loading.bytes = loaded.bytes;
          this.bytes += loaded.bytes;
          this.evict();
        }
        return loaded.locator;
      }),
    };
    // A load that fails is not kept: the next lookup tries again.
    loading.locator.catch(() => {
      if (this.shards.get(shard) === loading) this.forget(shard);
    });
    this.shards.set(shard, loading);
    return loading.locator;
  }

  /** Drops the shards used longest ago while the kept ones hold more than the budget (never the last one). */
  private evict(): void {
    for (const shard of this.shards.keys()) {
      if (this.bytes <= this.budget || this.shards.size <= 1) return;
      this.forget(shard);
    }
  }

  private forget(shard: number): void {
    this.bytes -= this.shards.get(shard)?.bytes ?? 0;
    this.shards.delete(shard);
  }

  /** A shard's locator, and about what it holds in bytes. */
  private async load(n: number): Promise<{ locator: ShardLocator | null; bytes: number }> {
    const gone = (caught: unknown) => {
      if ((caught as { name?: string }).name === 'NoSuchKey') return null;
      throw caught;
    };
    const shard = await planShard(this.blobs, this.run, n).catch(gone);
    if (!shard) {
      // No plan. A dataset of one object has no pack: its lines are that object's (named, unless the
      // run was started on a prefix). Where the run may have packs (it has an object list), a line may
      // be a pack's.
      const { dataset } = this.run;
      if (dataset.objects === 1)
        return {
          locator: { kind: 'object', key: dataset.key.endsWith('/') ? null : dataset.key },
          bytes: PLACE_BYTES + 2 * dataset.key.length,
        };
      return { locator: dataset.objectWidth > 0 ? UNPLACED : null, bytes: PLACE_BYTES };
    }
    if (shard.objects === 1)
      return { locator: { kind: 'object', key: shard.key }, bytes: PLACE_BYTES + 2 * shard.key.length };
    const [startsBytes, objects] = await Promise.all([
      readIfThere(this.blobs, runKeys(this.run.runId).packStarts(n)),
      packObjects(this.blobs, this.run, shard).catch(gone),
    ]);
    if (!startsBytes || !objects) return { locator: UNPLACED, bytes: PLACE_BYTES };
    const { starts } = PackStartsSchema.parse(JSON.parse(Buffer.from(startsBytes).toString('utf8')));
    const keys = objects.map((object) => object.key);
    return {
      locator: {
        kind: 'pack',
        place: (line) => {
          const at = lineInPack(starts, line);
          return { object: keys[at.index] ?? null, line: at.line };
        },
      },
      // A key's characters (two bytes each at most, as V8 keeps them) and a start's number.
      bytes: keys.reduce((sum, key) => sum + 2 * key.length + 8, PLACE_BYTES),
    };
  }
}

/** Reads a lane's checkpoint: null before the lane's first step. */
export async function laneCheckpoint(
  blobs: BlobStore,
  runId: string,
  lane: number,
): Promise<LaneCheckpoint | null> {
  const bytes = await readIfThere(blobs, runKeys(runId).lane(lane));
  return bytes ? LaneCheckpointSchema.parse(JSON.parse(Buffer.from(bytes).toString('utf8'))) : null;
}
