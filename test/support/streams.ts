/** Bytes of `text` (or of raw bytes) delivered in chunks of at most `size` bytes. */
export async function* chunksOf(data: string | Uint8Array, size = 64 * 1024): AsyncGenerator<Uint8Array> {
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  for (let start = 0; start < bytes.length; start += size) yield bytes.subarray(start, start + size);
}

/** Bytes delivered at the chunk boundaries given (each a length; the rest in one last chunk). */
export async function* chunksAt(
  data: string | Uint8Array,
  cuts: readonly number[],
): AsyncGenerator<Uint8Array> {
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  let start = 0;
  for (const cut of cuts) {
    if (start >= bytes.length) break;
    const end = Math.min(bytes.length, start + Math.max(1, cut));
    yield bytes.subarray(start, end);
    start = end;
  }
  if (start < bytes.length) yield bytes.subarray(start);
}

/** Everything an async iterable yields, in order. */
export async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const value of iterable) out.push(value);
  return out;
}

/** An async iterable of the given values. */
export async function* fromArray<T>(values: readonly T[]): AsyncGenerator<T> {
  yield* values;
}
