/**
 * Generated datasets for benchmarks: JSONL records of about `recordBytes` each, produced on the fly in
 * large chunks so that the generator itself holds nothing.
 */
export async function* chatDataset(totalBytes: number, recordBytes = 1000): AsyncGenerator<Uint8Array> {
  const filler = 'lorem ipsum dolor sit amet '.repeat(Math.ceil(recordBytes / 27)).slice(0, recordBytes - 40);
  const perChunk = Math.max(1, Math.floor((1024 * 1024) / recordBytes));
  let written = 0;
  let id = 0;
  while (written < totalBytes) {
    const lines: string[] = [];
    for (let i = 0; i < perChunk; i++) lines.push(JSON.stringify({ id: `r${id++}`, content: filler }));
    const chunk = Buffer.from(`${lines.join('\n')}\n`);
    written += chunk.length;
    yield chunk;
  }
}
