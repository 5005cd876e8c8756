import { randomBytes } from 'node:crypto';

/** A small seeded pseudo-random generator (mulberry32): the same seed gives the same run. */
export class Random {
  private state: number;
  constructor(seed?: number) {
    this.state = (seed ?? randomBytes(4).readUInt32LE(0)) >>> 0;
  }
  /** A float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  /** One of the values. */
  pick<T>(values: readonly T[]): T {
    const value = values[Math.floor(this.next() * values.length)];
    if (value === undefined) throw new Error('pick from an empty list');
    return value;
  }
  /** `length` characters from `alphabet`. */
  chars(length: number, alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'): string {
    let out = '';
    for (let i = 0; i < length; i++) out += alphabet[Math.floor(this.next() * alphabet.length)];
    return out;
  }
}

/** A 32-bit hash of strings, to derive per-request values from the seed and the request. */
export function hash32(...parts: (string | number)[]): number {
  let h = 0x811c9dc5;
  for (const part of parts) {
    const text = String(part);
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
    h = Math.imul(h ^ 0xff, 0x01000193);
  }
  return h >>> 0;
}

/** Ids in OpenAI's shapes, from the emulator's generator. */
export class Ids {
  constructor(private readonly random: Random) {}
  file(): string {
    return `file-${this.random.chars(22)}`;
  }
  batch(): string {
    return `batch_${this.random.chars(32, '0123456789abcdef')}`;
  }
  request(): string {
    return `req_${this.random.chars(32, '0123456789abcdef')}`;
  }
  batchRequest(): string {
    return `batch_req_${this.random.chars(32, '0123456789abcdef')}`;
  }
  event(): string {
    return `evt_${this.random.chars(32, '0123456789abcdef')}`;
  }
}
