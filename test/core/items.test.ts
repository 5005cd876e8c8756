import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BatchInputItemSchema, parseInputItem } from '../../functions/core/items';

describe('parseInputItem on items of every shape', () => {
  it('gives what the item schema gives (the common shape is taken by hand, the rest by it)', () => {
    const loose = fc.oneof(
      fc.constant(null),
      fc.constant(undefined),
      fc.integer(),
      fc.boolean(),
      fc.string({ maxLength: 3 }),
      fc.constant({}),
      fc.constant([]),
    );
    const id = fc.oneof(
      fc.constantFrom('', 'a', 'r1', 'x'.repeat(512), 'x'.repeat(513), '\u00e9'.repeat(512)),
      fc.string(),
      fc.integer(),
      fc.constantFrom(-0, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53, -(2 ** 53), 2 ** 53 - 1, 1e300),
      fc.constant(10n),
      loose,
    );
    const messages = fc.oneof(
      fc.constant([{ role: 'user', content: 'hi' }]),
      fc.array(loose, { maxLength: 3 }),
      fc.constant(Object.assign(new Array(2), { 1: 1 })), // a hole at 0
      loose,
    );
    const item = fc.record(
      {
        id,
        model: fc.oneof(fc.constantFrom('', 'gpt-4o-mini'), loose),
        body: fc.oneof(fc.constant({ model: 'm', input: 'x' }), fc.constant({ 1: 2 }), loose),
        messages,
        input: loose,
        prompt: loose,
        temperature: loose,
        '10': loose,
        constructor: loose,
      },
      { requiredKeys: [] },
    );
    // Objects that are not plain: a null prototype, a class, an array, an own __proto__ key, an inherited key.
    const other = fc.oneof(
      item.map((value) => Object.assign(Object.create(null), value)),
      item.map((value) => Object.assign(new (class Item {})(), value)),
      item.map((value) => ({ ...value, ...JSON.parse('{"__proto__": {"x": 1}}') })),
      item.map((value) => Object.create(value)),
      fc.constant([{ id: 'a' }]),
      fc.constant(new Date(0)),
      loose,
    );
    fc.assert(
      fc.property(fc.oneof(item, other), (value) => {
        const expected = BatchInputItemSchema.safeParse(value);
        const actual = parseInputItem(value);
        expect(actual.success).toBe(expected.success);
        if (!actual.success || !expected.success) {
          expect(actual.error?.issues).toEqual(expected.error?.issues);
          return;
        }
        expect(actual.data).toStrictEqual(expected.data);
        expect(Object.keys(actual.data)).toEqual(Object.keys(expected.data));
        expect(Object.getPrototypeOf(actual.data)).toBe(Object.getPrototypeOf(expected.data));
        if (Array.isArray(actual.data.messages)) expect(actual.data.messages).not.toBe(value.messages);
      }),
      { numRuns: 5000 },
    );
  });

  it('takes the common shape without the schema', () => {
    const value = { id: 7, messages: [{ role: 'user', content: 'hi' }], temperature: 0 };
    expect(parseInputItem(value)).toStrictEqual({
      success: true,
      data: { id: '7', messages: [{ role: 'user', content: 'hi' }], temperature: 0 },
    });
  });
});
