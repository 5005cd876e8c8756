import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LineWriter } from '../../functions/core/channel';

/** A sink that keeps every chunk it is given. */
function keeping(): { chunks: Uint8Array[]; sink: (body: AsyncIterable<Uint8Array>) => Promise<void> } {
  const chunks: Uint8Array[] = [];
  return {
    chunks,
    sink: async (body) => {
      for await (const chunk of body) chunks.push(Buffer.from(chunk));
    },
  };
}

describe('LineWriter', () => {
  it('writes each line and a newline, as Buffer.from encodes them, whatever the chunk size', async () => {
    const lineArb = fc.string({ unit: fc.constantFrom('a', 'é', '😀', '\ud800', '"', ' '), maxLength: 40 });
    await fc.assert(
      fc.asyncProperty(
        fc.array(lineArb, { maxLength: 40 }),
        fc.integer({ min: 1, max: 64 }),
        async (lines, size) => {
          const { chunks, sink } = keeping();
          const writer = new LineWriter(sink, size);
          for (const line of lines) await writer.write(line);
          await writer.close();
          expect(Buffer.concat(chunks)).toEqual(Buffer.from(lines.map((line) => `${line}\n`).join('')));
          expect(writer.lines).toBe(lines.length);
          expect(chunks.every((chunk) => chunk.length > 0)).toBe(true);
        },
      ),
    );
  });

  it('makes the next write throw once the sink has failed', async () => {
    const writer = new LineWriter(async () => {
      throw new Error('upload refused');
    }, 8);
    await expect(
      (async () => {
        for (let i = 0; i < 100; i++) await writer.write('0123456789');
      })(),
    ).rejects.toThrow('upload refused');
  });
});
