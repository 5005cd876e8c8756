import { createWriteStream, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BlobStore } from '../functions/core/ports';

/**
 * Copies a run's images (`runs/<id>/images/<custom_id>-<n>.png`) into a folder, one file each under the
 * same name, streamed; the folder is made only when there is an image. Resolves with how many there were.
 */
export async function downloadImages(blobs: BlobStore, runId: string, dir: string): Promise<number> {
  const prefix = `runs/${runId}/images/`;
  let count = 0;
  for await (const object of blobs.list(prefix)) {
    if (count === 0) mkdirSync(dir, { recursive: true });
    await pipeline(
      Readable.from(blobs.read(object.key)),
      createWriteStream(join(dir, object.key.slice(prefix.length))),
    );
    count += 1;
  }
  return count;
}
