import { z } from 'zod';
import { InvariantError } from './errors';
import { GZIP_EXPANSION } from './id-files';

/**
 * A shard: a part of the dataset that one prepare lane reads on its own. It is a whole object, a byte
 * range of a large one, or a pack of small whole objects that follow each other in the dataset. A byte
 * range owns the lines that START inside it: its reader begins at the first line start at or after `start`
 * and reads on past `end` to finish the last line it owns. So shards of one object cover its lines exactly
 * once, whatever bytes the boundaries fall on.
 *
 * A pack (`objects` > 1) is objects `object` to `object + objects - 1`, each read whole, one after the
 * other, into the same parts: a prefix of many small files becomes a few shards and a few batches, not a
 * shard and a batch a file. Its `key`, `size` and `etag` are its first object's; the others are in the
 * run's object list (`objectListCodec`). Within a pack, the run's own files (parts' lines files, id
 * entries, file names) number lines across the whole pack, the "shard line"; what a user sees (errors,
 * hooks) numbers them per object, found from the pack's table of where each object starts.
 */
export const ShardSchema = z.object({
  /** The shard's number, in dataset order (object by object, range by range). */
  shard: z.number().int().nonnegative(),
  /** The object's index in the dataset (objects in key order). */
  object: z.number().int().nonnegative(),
  key: z.string(),
  /** The object's size and ETag, as listed when the run was registered. */
  size: z.number().int().nonnegative(),
  etag: z.string(),
  /** The nominal byte range [start, end) of the object. */
  start: z.number().int().nonnegative(),
  end: z.number().int().nonnegative(),
  /** The object's content is gzip: it is one shard, read whole. */
  gzip: z.boolean(),
  /** Whole objects the shard holds: more than one for a pack of small objects (see above). */
  objects: z.number().int().positive().default(1),
});

/** A shard of the dataset. */
export type Shard = z.infer<typeof ShardSchema>;

/** An object of the dataset, as Register lists it, with whether its first bytes say gzip. */
export interface PlannedObject {
  readonly key: string;
  readonly size: number;
  readonly etag: string;
  readonly gzip: boolean;
}

/**
 * Part numbers are given per shard: shard `n`'s k-th part is `n * SHARD_PART_SPAN + k`, so that lanes never
 * share a number and a step run again numbers its parts as before. Resubmission parts are numbered from
 * `shards * SHARD_PART_SPAN` up.
 */
export const SHARD_PART_SPAN = 100_000;

/** The part number of a shard's k-th part. */
export function shardPart(shard: number, k: number): number {
  if (k >= SHARD_PART_SPAN)
    throw new InvariantError(
      `shard ${shard} has more than ${SHARD_PART_SPAN} parts: make shardBytes smaller`,
    );
  return shard * SHARD_PART_SPAN + k;
}

/** The shard a prepared part comes from (resubmission parts give a number at or above the shard count). */
export function shardOfPart(part: number): number {
  return Math.floor(part / SHARD_PART_SPAN);
}

/**
 * The most objects one pack holds: a pack's lane reads their list lines in one GET, and keeps where each
 * starts in its checkpoint.
 */
export const MAX_PACK_OBJECTS = 1000;

/**
 * The largest gzip object a pack takes (and then only one whose GZIP_EXPANSION times fits in shardBytes):
 * a step that stops inside a packed gzip object inflates it again from its start, so this bounds what a
 * step reads twice. A larger gzip object is a shard of its own, inflated once into a copy.
 */
export const MAX_PACKED_GZIP_BYTES = 1024 * 1024;

/**
 * The shards of a dataset, in dataset order: objects of `shardBytes` or less are packed, one after the
 * other, into shards of at most `shardBytes` and MAX_PACK_OBJECTS objects, a gzip object counted as
 * GZIP_EXPANSION times its size and taken up to MAX_PACKED_GZIP_BYTES; a larger object that is not gzip is
 * cut into byte ranges of `shardBytes`; a larger gzip object is one shard. Empty objects have no shard,
 * and close the open pack (a pack's objects are consecutive).
 * Objects are given one at a time, in dataset order; it holds one pack at most (its first object and its
 * counts). A pack of several objects says `gzip: false`: which of its objects are gzip, the object list
 * says.
 */
export class ShardPlanner {
  private shard = 0;
  private index = 0;
  private pack: { first: Omit<Shard, 'shard'>; objects: number; bytes: number } | null = null;

  constructor(private readonly shardBytes: number) {}

  /** The shards complete once `object`, the dataset's next, is planned. */
  add(object: PlannedObject): Shard[] {
    const base = {
      object: this.index++,
      key: object.key,
      size: object.size,
      etag: object.etag,
      gzip: object.gzip,
      start: 0,
      end: object.size,
      objects: 1,
    };
    // A pack's lane reads the objects from its first one to `objects` after it: an object left out must
    // close the pack, or the object after it would never be read.
    if (object.size === 0) return this.finish();
    const { shardBytes } = this;
    const weight = object.gzip ? object.size * GZIP_EXPANSION : object.size;
    if (weight <= shardBytes && (!object.gzip || object.size <= MAX_PACKED_GZIP_BYTES)) {
      const { pack } = this;
      if (pack && pack.bytes + weight <= shardBytes && pack.objects < MAX_PACK_OBJECTS) {
        pack.objects += 1;
        pack.bytes += weight;
        return [];
      }
      const out = this.finish();
      this.pack = { first: base, objects: 1, bytes: weight };
      return out;
    }
    const out = this.finish();
    if (object.gzip) out.push({ shard: this.shard++, ...base });
    else
      for (let start = 0; start < object.size; start += shardBytes)
        out.push({ shard: this.shard++, ...base, start, end: Math.min(object.size, start + shardBytes) });
    return out;
  }

  /** The pack still open, as a shard (none when there is none). */
  finish(): Shard[] {
    const { pack } = this;
    if (!pack) return [];
    this.pack = null;
    if (pack.objects === 1) return [{ shard: this.shard++, ...pack.first }];
    return [{ shard: this.shard++, ...pack.first, gzip: false, objects: pack.objects }];
  }
}

/** The shards of a dataset's objects (see {@link ShardPlanner}). */
export function* shardsOf(objects: Iterable<PlannedObject>, shardBytes: number): Generator<Shard> {
  const planner = new ShardPlanner(shardBytes);
  for (const object of objects) yield* planner.add(object);
  yield* planner.finish();
}

/**
 * The shards a lane prepares: lane `lane` of `lanes` takes shards lane, lane + lanes, lane + 2 * lanes, ...
 * so that shard 0 (whose parts can go to OpenAI first) is prepared first, and lanes progress through the
 * dataset side by side.
 */
export function laneShards(lane: number, lanes: number, shards: number): number[] {
  const out: number[] = [];
  for (let s = lane; s < shards; s += lanes) out.push(s);
  return out;
}

/** The next shard of a lane after `shard`, or null when the lane is done. */
export function nextLaneShard(shard: number, lanes: number, shards: number): number | null {
  const next = shard + lanes;
  return next < shards ? next : null;
}

/** A JSON text padded with spaces to `width` bytes, newline included; null when it is longer. */
function fixedWidth(json: string, width: number): string | null {
  const pad = width - 1 - Buffer.byteLength(json);
  return pad < 0 ? null : `${json}${' '.repeat(pad)}\n`;
}

/**
 * A shard plan stored as fixed-width lines (JSON padded with spaces), so that shard n is read with one
 * ranged GET of `width` bytes at `n * width`, however many shards a dataset has.
 */
export const planCodec = {
  /** The width every line of these shards fits in, newline included. */
  width(shards: Iterable<Shard>): number {
    let width = 0;
    for (const shard of shards) width = Math.max(width, Buffer.byteLength(JSON.stringify(shard)) + 1);
    return width;
  },
  /** One shard's fixed-width line; null when it is longer than `width`. */
  fitted(shard: Shard, width: number): string | null {
    return fixedWidth(JSON.stringify(shard), width);
  },
  /** One shard's fixed-width line. */
  encode(shard: Shard, width: number): string {
    const line = planCodec.fitted(shard, width);
    if (line === null)
      throw new InvariantError(`shard ${shard.shard} does not fit the plan's width ${width}`);
    return line;
  },
  /** A shard from its line's bytes. */
  decode(bytes: Uint8Array | string): Shard {
    const text = typeof bytes === 'string' ? bytes : Buffer.from(bytes).toString('utf8');
    return ShardSchema.parse(JSON.parse(text.trim()));
  },
};

/** An object of the dataset as the run's object list holds it: what a pack's lane reads it by. */
export const ListedObjectSchema = z.object({
  key: z.string(),
  size: z.number().int().nonnegative(),
  etag: z.string(),
  /** Its content is gzip (Register told from its first bytes). */
  gzip: z.boolean().default(false),
});

/** An object of the run's object list. */
export type ListedObject = z.infer<typeof ListedObjectSchema>;

/**
 * The run's object list (`runKeys.objectList`): one fixed-width line an object (JSON padded with spaces),
 * object n at `n * width`, so that a pack's objects are read with one ranged GET.
 */
export const objectListCodec = {
  /** The width this object's line needs, newline included, gzip or not. */
  widthOf(object: Omit<ListedObject, 'gzip'>): number {
    return Buffer.byteLength(JSON.stringify(listed({ ...object, gzip: false }))) + 1;
  },
  /** One object's fixed-width line; null when it is longer than `width`. */
  fitted(object: ListedObject, width: number): string | null {
    return fixedWidth(JSON.stringify(listed(object)), width);
  },
  encode(object: ListedObject, width: number): string {
    const line = objectListCodec.fitted(object, width);
    if (line === null)
      throw new InvariantError(`object ${object.key} does not fit the object list's width ${width}`);
    return line;
  },
  /** The objects of a run of consecutive lines. */
  decode(bytes: Uint8Array, width: number): ListedObject[] {
    const out: ListedObject[] = [];
    for (let at = 0; at + width <= bytes.length; at += width) {
      const text = Buffer.from(bytes.buffer, bytes.byteOffset + at, width).toString('utf8');
      out.push(ListedObjectSchema.parse(JSON.parse(text.trim())));
    }
    return out;
  },
};

/** Only the fields the list keeps, in a fixed order. */
function listed(object: ListedObject): ListedObject {
  return { key: object.key, size: object.size, etag: object.etag, gzip: object.gzip };
}

/**
 * Where each object of a pack starts (`runKeys.packStarts`), written once the pack is prepared: `starts[i]`
 * is the number of the pack's lines before its i-th object. A shard line `l` is then line `l - starts[i]`
 * of the last object i whose start is below it.
 */
export const PackStartsSchema = z.object({ starts: z.array(z.number().int().nonnegative()).min(1) });

/** Where each object of a pack starts. */
export type PackStarts = z.infer<typeof PackStartsSchema>;

/** The object (its index in the pack) and that object's own line for a line of the pack. */
export function lineInPack(starts: readonly number[], shardLine: number): { index: number; line: number } {
  let low = 0;
  let high = starts.length - 1;
  // The last i with starts[i] < shardLine.
  while (low < high) {
    const mid = (low + high + 1) >> 1;
    if ((starts[mid] ?? 0) < shardLine) low = mid;
    else high = mid - 1;
  }
  return { index: low, line: shardLine - (starts[low] ?? 0) };
}

/**
 * The number of the first line shard `shard` owns, from the first line of the object: `newlinesBefore` is
 * the number of newline bytes in [0, shard.start) of the object, and `previousByteIsNewline` whether the byte
 * at shard.start - 1 is one. A shard starting mid-line does not own that line (the shard before it does).
 */
export function firstLineOf(shard: Shard, newlinesBefore: number, previousByteIsNewline: boolean): number {
  if (shard.start === 0) return 1;
  return newlinesBefore + (previousByteIsNewline ? 1 : 2);
}
