import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { fingerprint, IdRegistry } from '../../functions/core/ids';

describe('IdRegistry', () => {
  it('tells a new id from a repeated one, with the line it was first seen on', () => {
    const ids = new IdRegistry();
    expect(ids.claim('a', 3)).toBe(0);
    expect(ids.claim('b', 4)).toBe(0);
    expect(ids.claim('a', 9)).toBe(3);
    expect(ids.size).toBe(2);
  });

  it('agrees with a Set over random ids, across growth and a round trip through bytes', () => {
    fc.assert(
      fc.property(fc.array(fc.string({ maxLength: 6 }), { maxLength: 3000 }), fc.nat(3000), (values, cut) => {
        let ids = new IdRegistry(4);
        const seen = new Map<string, number>();
        values.forEach((value, i) => {
          if (i === cut) ids = IdRegistry.fromBytes(ids.toBytes());
          const first = seen.get(value) ?? 0;
          expect(ids.claim(value, i + 1)).toBe(first);
          if (first === 0) seen.set(value, i + 1);
        });
        expect(ids.size).toBe(seen.size);
      }),
    );
  });

  it('keeps a million distinct ids apart', () => {
    const ids = new IdRegistry();
    let clashes = 0;
    for (let i = 0; i < 1_000_000; i++) if (ids.claim(`record-${i}`, i + 1) !== 0) clashes += 1;
    expect(clashes).toBe(0);
    expect(ids.size).toBe(1_000_000);
  });

  it('refuses bytes that are not a registry', () => {
    expect(() => IdRegistry.fromBytes(new Uint8Array(17))).toThrow(/not an id registry/);
  });

  it('never gives the empty-slot fingerprint', () => {
    expect(fingerprint('')).not.toEqual([0, 0]);
  });
});
