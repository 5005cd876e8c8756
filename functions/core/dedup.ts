import { InvariantError } from './errors';
import type { IdEntry } from './id-files';
import { fingerprint } from './ids';

/** Where an id was first used: the use every later one is a duplicate of. */
export interface FirstUse {
  readonly shard: number;
  readonly line: number;
}

/** A later use of an id: the entry to drop, and the earliest use of the same id. */
export interface Duplicate {
  readonly entry: IdEntry;
  readonly winner: FirstUse;
}

/** Entries of one partition group, read once per call: {@link duplicatesIn} calls it up to three times. */
export type EntrySource = () => AsyncIterable<IdEntry> | Iterable<IdEntry>;

/** What {@link duplicatesIn} held, for a caller that watches its memory (each a count, at its most). */
export interface DedupHeld {
  /** Ids held after the second read: the ids used at least twice (and those whose fingerprint collides). */
  ids: number;
  /** Uses held for ids whose uses did not come in (shard, line) order: none when read as Settle reads. */
  uses: number;
}

/** What is kept of an id whose fingerprint was seen twice. */
interface Track {
  /** The earliest use (by shard, then line). */
  first: FirstUse;
  /** The use read last: in the second read, to see the order; in the third, the use last given. */
  last: FirstUse | null;
  /** At least two distinct (shard, line) uses. */
  distinct: boolean;
  /** Every use came at or after the one before, by (shard, line): a repeat is next to what it repeats. */
  ordered: boolean;
  /** The uses given, for an id whose uses came out of order only. */
  given?: Set<string>;
}

const order = (a: FirstUse, b: FirstUse) => a.shard - b.shard || a.line - b.line;

/**
 * The duplicates among the entries of a partition group, as a stream: for each id used more than once,
 * every use after the earliest (by shard, then line), with the earliest's location. Entries that repeat the
 * same (id, shard, line) are one use (a prepare step that ran again), never a duplicate of itself, and are
 * given once. Ids are compared as exact strings. Duplicates come in the order the entries are read.
 *
 * Memory is bounded by the DISTINCT ids used more than once, never by their uses. The entries are read up
 * to three times: the first read keeps only a 64-bit fingerprint of each id and whether it was seen more
 * than once (9 bytes a slot, the table at most 3/4 full: 12 to 24 bytes an entry); the second keeps, for
 * each id whose fingerprint was seen twice, its earliest use, whether it has another, and whether its
 * uses came in (shard, line) order; the third gives every use that is not the earliest.
 *
 * A repeated use is given once without remembering the uses given: when an id's uses come in (shard, line)
 * order, a repeat comes right after what it repeats. Settle reads id files in key order (shard, then the
 * line their step started at), and each file's entries in line order, so its uses always come so; an id
 * whose uses do not (entries given in any order) has the uses it gave remembered, that id alone.
 */
export async function* duplicatesIn(
  source: EntrySource,
  expected = 1024,
  held: DedupHeld = { ids: 0, uses: 0 },
): AsyncGenerator<Duplicate> {
  const table = new FingerprintTable(expected);
  for await (const entry of source()) table.add(entry.id);
  if (!table.repeated) return;
  const tracks = new Map<string, Track>();
  for await (const entry of source()) {
    if (!table.seenTwice(entry.id)) continue;
    const use: FirstUse = { shard: entry.shard, line: entry.line };
    const track = tracks.get(entry.id);
    if (!track) {
      tracks.set(entry.id, { first: use, last: use, distinct: false, ordered: true });
      continue;
    }
    if (track.last && order(use, track.last) < 0) track.ordered = false;
    track.last = use;
    const against = order(use, track.first);
    if (against !== 0) track.distinct = true;
    if (against < 0) track.first = use;
  }
  for (const [id, track] of tracks) {
    if (track.distinct) track.last = null;
    else tracks.delete(id); // one use, perhaps read twice: nothing to drop
  }
  held.ids = Math.max(held.ids, tracks.size);
  if (tracks.size === 0) return;
  for await (const entry of source()) {
    const track = tracks.get(entry.id);
    if (!track) continue;
    const use: FirstUse = { shard: entry.shard, line: entry.line };
    if (order(use, track.first) === 0) continue;
    if (track.ordered) {
      const since = track.last ? order(use, track.last) : 1;
      if (since === 0) continue; // the same use again, right after it
      if (since < 0)
        throw new InvariantError(`the uses of id ${JSON.stringify(entry.id)} changed between two reads`);
      track.last = use;
    } else {
      track.given ??= new Set();
      const key = `${use.shard}:${use.line}`;
      if (track.given.has(key)) continue;
      track.given.add(key);
      held.uses += 1;
    }
    yield { entry, winner: track.first };
  }
}

/** Orders duplicates by part, then line, then id. */
export function compareDuplicates(a: Duplicate, b: Duplicate): number {
  return (
    a.entry.part - b.entry.part ||
    a.entry.line - b.entry.line ||
    (a.entry.id < b.entry.id ? -1 : a.entry.id > b.entry.id ? 1 : 0)
  );
}

/**
 * Every duplicate of {@link duplicatesIn}, held and sorted by part, then line, then id: for small inputs and
 * tests only (its memory grows with the duplicates; Settle streams them).
 */
export async function findDuplicates(source: EntrySource, expected = 1024): Promise<Duplicate[]> {
  const duplicates: Duplicate[] = [];
  for await (const duplicate of duplicatesIn(source, expected)) duplicates.push(duplicate);
  return duplicates.sort(compareDuplicates);
}

/**
 * 64-bit fingerprints in an open-addressing table, each with whether it was added more than once. Grows
 * when 3/4 full, so a wrong size hint costs time, not correctness.
 */
export class FingerprintTable {
  private keys: Uint32Array;
  private twice: Uint8Array;
  private count = 0;
  /** Some fingerprint was added more than once. */
  repeated = false;

  constructor(expected: number) {
    let slots = 16;
    while (slots * 0.75 < expected) slots *= 2;
    this.keys = new Uint32Array(slots * 2);
    this.twice = new Uint8Array(slots);
  }

  /** Distinct fingerprints held. */
  get size(): number {
    return this.count;
  }

  /** Bytes the table takes. */
  get byteLength(): number {
    return this.keys.byteLength + this.twice.byteLength;
  }

  add(id: string): void {
    if ((this.count + 1) * 4 > this.twice.length * 3) this.grow();
    const [high, low] = fingerprint(id);
    const slot = this.find(high, low);
    if (this.occupied(slot)) {
      this.twice[slot] = 1;
      this.repeated = true;
      return;
    }
    this.keys[slot * 2] = high;
    this.keys[slot * 2 + 1] = low;
    this.count += 1;
  }

  /** Whether the id's fingerprint was added more than once. */
  seenTwice(id: string): boolean {
    const [high, low] = fingerprint(id);
    const slot = this.find(high, low);
    return this.occupied(slot) && this.twice[slot] === 1;
  }

  private occupied(slot: number): boolean {
    return this.keys[slot * 2] !== 0 || this.keys[slot * 2 + 1] !== 0;
  }

  private find(high: number, low: number): number {
    const mask = this.twice.length - 1;
    let slot = (low ^ Math.imul(high, 0x9e3779b1)) & mask;
    while (this.occupied(slot)) {
      if (this.keys[slot * 2] === high && this.keys[slot * 2 + 1] === low) return slot;
      slot = (slot + 1) & mask;
    }
    return slot;
  }

  private grow(): void {
    const keys = this.keys;
    const twice = this.twice;
    this.keys = new Uint32Array(keys.length * 2);
    this.twice = new Uint8Array(twice.length * 2);
    for (let old = 0; old < twice.length; old++) {
      const high = keys[old * 2] ?? 0;
      const low = keys[old * 2 + 1] ?? 0;
      if (high === 0 && low === 0) continue;
      const slot = this.find(high, low);
      this.keys[slot * 2] = high;
      this.keys[slot * 2 + 1] = low;
      this.twice[slot] = twice[old] ?? 0;
    }
  }
}
