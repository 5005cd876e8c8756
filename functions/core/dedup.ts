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

/** Entries of one partition group, read once per call: {@link findDuplicates} calls it twice. */
export type EntrySource = () => AsyncIterable<IdEntry> | Iterable<IdEntry>;

/**
 * The duplicates among the entries of a partition group: for each id used more than once, every use after
 * the earliest (by shard, then line), with the earliest's location. Entries that repeat the same (id, shard,
 * line) are one use (a prepare step that ran again), never a duplicate of itself. Ids are compared as
 * exact strings.
 *
 * Memory: the entries are read twice. The first pass keeps only a 64-bit fingerprint of each id and whether
 * it was seen more than once (9 bytes a slot, the table at most 3/4 full: 12 to 24 bytes an entry); the
 * second keeps the entries whose fingerprint was seen more than once, and compares their ids exactly. So
 * memory is the table plus the colliding ids, never a string per entry.
 *
 * Duplicates come sorted by part, then line, then id.
 */
export async function findDuplicates(source: EntrySource, expected = 1024): Promise<Duplicate[]> {
  const table = new FingerprintTable(expected);
  for await (const entry of source()) table.add(entry.id);
  if (!table.repeated) return [];
  const candidates = new Map<string, IdEntry[]>();
  for await (const entry of source()) {
    if (!table.seenTwice(entry.id)) continue;
    const uses = candidates.get(entry.id);
    if (uses) uses.push(entry);
    else candidates.set(entry.id, [entry]);
  }
  const duplicates: Duplicate[] = [];
  for (const uses of candidates.values()) {
    if (uses.length < 2) continue;
    uses.sort((a, b) => a.shard - b.shard || a.line - b.line);
    const first = uses[0] as IdEntry;
    const winner: FirstUse = { shard: first.shard, line: first.line };
    let previous = first;
    for (const use of uses.slice(1)) {
      // The same use again (sorted, so repeats are side by side): a step that ran twice, not a duplicate.
      if (use.shard === previous.shard && use.line === previous.line) continue;
      duplicates.push({ entry: use, winner });
      previous = use;
    }
  }
  duplicates.sort(
    (a, b) =>
      a.entry.part - b.entry.part ||
      a.entry.line - b.entry.line ||
      (a.entry.id < b.entry.id ? -1 : a.entry.id > b.entry.id ? 1 : 0),
  );
  return duplicates;
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
