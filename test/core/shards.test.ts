import { describe, expect, it } from 'vitest';
import {
  lineInPack,
  MAX_PACK_OBJECTS,
  MAX_PACKED_GZIP_BYTES,
  objectListCodec,
  type PlannedObject,
  shardsOf,
} from '../../functions/core/shards';

const object = (key: string, size: number, gzip = false): PlannedObject => ({
  key,
  size,
  etag: `"${key}"`,
  gzip,
});

/** Each shard as `first object +count [start, end)`. */
const summary = (objects: PlannedObject[], shardBytes: number) =>
  [...shardsOf(objects, shardBytes)].map((s) => `${s.object}+${s.objects} [${s.start},${s.end})`);

describe('shardsOf', () => {
  it('packs small objects that follow each other up to shardBytes (gzip ones at ten times their size), and cuts large ones into ranges', () => {
    const objects = [
      object('a', 300),
      object('b', 300),
      object('c', 400), // fills the pack to exactly 1,000
      object('d', 1), // a new pack
      object('e', 2500), // larger: ranges, and it ends the pack before it
      object('f', 0), // empty: no shard
      object('g', 100),
      object('h', 50, true), // gzip: counted as 500 bytes
      object('i', 1000), // exactly shardBytes: a pack of its own
      object('j', 10),
      object('k', 101, true), // gzip, over a tenth of shardBytes: a shard of its own
      object('l', 10),
    ];
    expect(summary(objects, 1000)).toEqual([
      '0+3 [0,300)',
      '3+1 [0,1)',
      '4+1 [0,1000)',
      '4+1 [1000,2000)',
      '4+1 [2000,2500)',
      '6+2 [0,100)',
      '8+1 [0,1000)',
      '9+1 [0,10)',
      '10+1 [0,101)',
      '11+1 [0,10)',
    ]);
    const shards = [...shardsOf(objects, 1000)];
    expect(shards.map((s) => s.shard)).toEqual(shards.map((_, n) => n));
    expect(shards[0]).toMatchObject({ key: 'a', size: 300, etag: '"a"', gzip: false, objects: 3 });
    // A pack says gzip: false (the object list says which of its objects are); a gzip shard alone says true.
    expect(shards[5]).toMatchObject({ key: 'g', gzip: false, objects: 2 });
    expect(shards[8]).toMatchObject({ key: 'k', gzip: true, objects: 1 });
    // A gzip object packs only up to MAX_PACKED_GZIP_BYTES, whatever shardBytes.
    const big = 1024 ** 3;
    expect(summary([object('x', 10), object('y', MAX_PACKED_GZIP_BYTES, true)], big)).toEqual(['0+2 [0,10)']);
    expect(summary([object('x', 10), object('y', MAX_PACKED_GZIP_BYTES + 1, true)], big)).toEqual([
      '0+1 [0,10)',
      `1+1 [0,${MAX_PACKED_GZIP_BYTES + 1})`,
    ]);
  });

  it('closes a pack at an empty object, so that a pack is always consecutive objects', () => {
    // A lane reads a pack's objects from its first one on: a pack of a and c over the empty b would read b
    // in c's place, and c never.
    expect(summary([object('a', 10), object('b', 0), object('c', 10), object('d', 10)], 1000)).toEqual([
      '0+1 [0,10)',
      '2+2 [0,10)',
    ]);
  });

  it('puts at most MAX_PACK_OBJECTS objects in a pack', () => {
    const objects = Array.from({ length: MAX_PACK_OBJECTS * 2 + 5 }, (_, i) => object(`k${i}`, 1));
    expect(summary(objects, 1024 ** 3)).toEqual([
      `0+${MAX_PACK_OBJECTS} [0,1)`,
      `${MAX_PACK_OBJECTS}+${MAX_PACK_OBJECTS} [0,1)`,
      `${MAX_PACK_OBJECTS * 2}+5 [0,1)`,
    ]);
  });
});

describe('lineInPack', () => {
  it('gives the object and its own line of a line numbered across the pack, past objects without lines', () => {
    // Objects of 3, 0 (blank lines only), 2 and 4 lines.
    const starts = [0, 3, 3, 5];
    const places = Array.from({ length: 9 }, (_, i) => lineInPack(starts, i + 1));
    expect(places.map((p) => `${p.index}:${p.line}`)).toEqual([
      '0:1',
      '0:2',
      '0:3',
      '2:1',
      '2:2',
      '3:1',
      '3:2',
      '3:3',
      '3:4',
    ]);
    expect(lineInPack([0], 7)).toEqual({ index: 0, line: 7 });
  });
});

describe('objectListCodec', () => {
  it('writes fixed-width lines that read back from any run of them', () => {
    const long = { key: 'inputs/ünïcode "quoted".jsonl', size: 123456789, etag: '"e2-3"', gzip: false };
    const objects = [
      { key: 'inputs/a.jsonl.gz', size: 10, etag: '"e1"', gzip: true },
      long,
      { key: 'inputs/c', size: 0, etag: '', gzip: false },
    ];
    const width = Math.max(...objects.map((o) => objectListCodec.widthOf(o)));
    const bytes = Buffer.from(objects.map((o) => objectListCodec.encode(o, width)).join(''));
    expect(bytes.length).toBe(objects.length * width);
    expect(objectListCodec.decode(bytes, width)).toEqual(objects);
    expect(objectListCodec.decode(bytes.subarray(width, 3 * width), width)).toEqual(objects.slice(1));
    expect(() => objectListCodec.encode(long, width - 1)).toThrow(/does not fit/);
  });
});
