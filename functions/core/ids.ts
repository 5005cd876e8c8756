/**
 * The custom_ids a run has given out, so that a duplicate id is caught instead of overwriting a result.
 *
 * Ids are kept as 64-bit fingerprints in an open-addressing table (8 bytes a slot, at most 3/4 full), so
 * a run of ten million records needs about 100 MiB rather than the gigabytes a Set of strings would. Two
 * distinct ids share a fingerprint with odds of about n^2 / 2^65 (3e-4 for 100 million ids); such a pair
 * would surface as a `duplicate_id` error naming both ids' lines, never as a lost or merged record.
 */
export class IdRegistry {
  private table: Uint32Array;
  private lines: Uint32Array;
  private count = 0;

  constructor(capacity = 1024) {
    let slots = 16;
    while (slots * 0.75 < capacity) slots *= 2;
    this.table = new Uint32Array(slots * 2);
    this.lines = new Uint32Array(slots);
  }

  /** How many ids are held. */
  get size(): number {
    return this.count;
  }

  /**
   * Records `id` as first seen on `line`. Returns 0 when it is new, or the line it was first seen on.
   */
  claim(id: string, line: number): number {
    if ((this.count + 1) * 4 > (this.table.length / 2) * 3) this.grow();
    const [high, low] = fingerprint(id);
    const slot = this.find(high, low);
    if (this.occupied(slot)) return this.lines[slot] ?? 0;
    this.put(slot, high, low, line);
    this.count += 1;
    return 0;
  }

  /** The registry as bytes, to store beside a checkpoint. */
  toBytes(): Uint8Array {
    const out = new Uint8Array(4 + this.table.byteLength + this.lines.byteLength);
    new DataView(out.buffer).setUint32(0, this.count, true);
    out.set(new Uint8Array(this.table.buffer, this.table.byteOffset, this.table.byteLength), 4);
    out.set(
      new Uint8Array(this.lines.buffer, this.lines.byteOffset, this.lines.byteLength),
      4 + this.table.byteLength,
    );
    return out;
  }

  /** A registry from {@link toBytes}' output. */
  static fromBytes(bytes: Uint8Array): IdRegistry {
    const slots = (bytes.byteLength - 4) / 12;
    if (!Number.isInteger(slots) || slots < 16 || (slots & (slots - 1)) !== 0) {
      throw new Error(`not an id registry: ${bytes.byteLength} bytes`);
    }
    const registry = new IdRegistry(0);
    const copy = new Uint8Array(bytes); // aligned copy
    registry.count = new DataView(copy.buffer).getUint32(0, true);
    registry.table = new Uint32Array(copy.buffer.slice(4, 4 + slots * 8));
    registry.lines = new Uint32Array(copy.buffer.slice(4 + slots * 8));
    return registry;
  }

  private occupied(slot: number): boolean {
    return this.table[slot * 2] !== 0 || this.table[slot * 2 + 1] !== 0;
  }

  private find(high: number, low: number): number {
    const mask = this.lines.length - 1;
    let slot = low & mask;
    while (this.occupied(slot)) {
      if (this.table[slot * 2] === high && this.table[slot * 2 + 1] === low) return slot;
      slot = (slot + 1) & mask;
    }
    return slot;
  }

  private put(slot: number, high: number, low: number, line: number): void {
    this.table[slot * 2] = high;
    this.table[slot * 2 + 1] = low;
    this.lines[slot] = line;
  }

  private grow(): void {
    const oldTable = this.table;
    const oldLines = this.lines;
    this.table = new Uint32Array(oldTable.length * 2);
    this.lines = new Uint32Array(oldLines.length * 2);
    for (let slot = 0; slot < oldLines.length; slot++) {
      const high = oldTable[slot * 2] ?? 0;
      const low = oldTable[slot * 2 + 1] ?? 0;
      if (high === 0 && low === 0) continue;
      this.put(this.find(high, low), high, low, oldLines[slot] ?? 0);
    }
  }
}

/** Two independent 32-bit hashes of a string (FNV-1a and a murmur-finalized multiplicative hash); never 0,0. */
export function fingerprint(id: string): [number, number] {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  for (let i = 0; i < id.length; i++) {
    const code = id.charCodeAt(i);
    a = Math.imul(a ^ code, 0x01000193);
    b = Math.imul(b ^ code, 0x5bd1e995);
    b ^= b >>> 15;
  }
  b ^= id.length;
  b = Math.imul(b ^ (b >>> 16), 0x85ebca6b);
  b = Math.imul(b ^ (b >>> 13), 0xc2b2ae35);
  b ^= b >>> 16;
  a >>>= 0;
  b >>>= 0;
  return a === 0 && b === 0 ? [0, 1] : [a, b];
}
