import { z } from 'zod';
import { InvariantError } from './errors';

/**
 * A shard: a part of the dataset that one prepare lane reads on its own. It is a whole object, or a byte
 * range of a large one. A byte range owns the lines that START inside it: its reader begins at the first
 * line start at or after `start` and reads on past `end` to finish the last line it owns. So shards of
 * one object cover its lines exactly once, whatever bytes the boundaries fall on.
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
 * The shards of a dataset: each object whole, or, when it is larger than `shardBytes` and not gzip, in
 * byte ranges of `shardBytes`. Empty objects have no shard. Yields shards in dataset order.
 */
export function* shardsOf(objects: Iterable<PlannedObject>, shardBytes: number): Generator<Shard> {
  let shard = 0;
  let index = 0;
  for (const object of objects) {
    const base = {
      object: index++,
      key: object.key,
      size: object.size,
      etag: object.etag,
      gzip: object.gzip,
    };
    if (object.size === 0) continue;
    if (object.gzip || object.size <= shardBytes) {
      yield { shard: shard++, ...base, start: 0, end: object.size };
      continue;
    }
    for (let start = 0; start < object.size; start += shardBytes)
      yield { shard: shard++, ...base, start, end: Math.min(object.size, start + shardBytes) };
  }
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
  /** One shard's fixed-width line. */
  encode(shard: Shard, width: number): string {
    const json = JSON.stringify(shard);
    const pad = width - 1 - Buffer.byteLength(json);
    if (pad < 0) throw new InvariantError(`shard ${shard.shard} does not fit the plan's width ${width}`);
    return `${json}${' '.repeat(pad)}\n`;
  },
  /** A shard from its line's bytes. */
  decode(bytes: Uint8Array | string): Shard {
    const text = typeof bytes === 'string' ? bytes : Buffer.from(bytes).toString('utf8');
    return ShardSchema.parse(JSON.parse(text.trim()));
  },
};

/**
 * The number of the first line shard `shard` owns, from the first line of the object: `newlinesBefore` is
 * the number of newline bytes in [0, shard.start) of the object, and `previousByteIsNewline` whether the byte
 * at shard.start - 1 is one. A shard starting mid-line does not own that line (the shard before it does).
 */
export function firstLineOf(shard: Shard, newlinesBefore: number, previousByteIsNewline: boolean): number {
  if (shard.start === 0) return 1;
  return newlinesBefore + (previousByteIsNewline ? 1 : 2);
}
