/**
 * Calls `f` on each item, in order, with at most `limit` calls at once, and starts none once `go()` says
 * false (calls already started finish). Gives how many were started, the first that many items. The first
 * rejection rejects it, once the calls under way have settled.
 */
export async function forEachLimit<T>(
  items: readonly T[],
  limit: number,
  f: (item: T, index: number) => Promise<void>,
  go: () => boolean = () => true,
): Promise<number> {
  let next = 0;
  let failure: { error: unknown } | null = null;
  const worker = async () => {
    while (!failure && next < items.length && go()) {
      const i = next++;
      try {
        await f(items[i] as T, i);
      } catch (caught) {
        failure ??= { error: caught };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(0, Math.min(limit, items.length)) }, worker));
  if (failure) throw (failure as { error: unknown }).error;
  return next;
}

/** Maps items with at most `limit` calls at once, keeping their order. */
export async function mapLimit<T, U>(
  items: readonly T[],
  limit: number,
  f: (item: T) => Promise<U>,
): Promise<U[]> {
  const out: U[] = new Array(items.length);
  await forEachLimit(items, limit, async (item, i) => {
    out[i] = await f(item);
  });
  return out;
}
