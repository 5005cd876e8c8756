import { createHash } from 'node:crypto';
import type { BatchOutputItem, Endpoint } from './items';
import { asRecord } from './values';

/** The endpoints whose answers carry images (`ImagesResponse`), stored as objects when collected. */
export const IMAGE_ENDPOINTS: readonly Endpoint[] = ['/v1/images/generations', '/v1/images/edits'];

/** True for an endpoint whose answers carry images. */
export function isImages(endpoint: Endpoint): boolean {
  return IMAGE_ENDPOINTS.includes(endpoint);
}

/** Where collecting puts the images of an answer: one object each, named by the core, stored by the step. */
export interface ImageSink {
  /** Stores an image under `name` (`<custom_id>-<n>.<ext>`); resolves with the object's key. */
  write(name: string, bytes: Uint8Array): Promise<string>;
}

/** A custom_id's longest form in a name before it is shortened (S3 keys are at most 1,024 bytes). */
const MAX_ID_CHARS = 200;

/**
 * The object name of an answer's n-th image (0-based, as in `data[n]`): the custom_id made safe for a key
 * and a file name (percent-encoded outside letters, digits, `.`, `_` and `-`; a long one shortened and
 * told apart by its hash), then `-<n>` and the image's extension.
 */
export function imageName(customId: string, index: number, extension: string): string {
  let id = encodeURIComponent(customId).replace(
    /[!'()*~]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
  if (id.length > MAX_ID_CHARS) {
    const hash = createHash('sha256').update(customId).digest('hex').slice(0, 16);
    id = `${id.slice(0, 100).replace(/%[0-9A-Fa-f]?$/, '')}~${hash}`;
  }
  return `${id}-${index}.${extension}`;
}

/** The extension of an image by its first bytes (PNG, JPEG, WebP), else by the answer's `output_format`. */
export function imageExtension(bytes: Uint8Array, outputFormat: unknown): string {
  const starts = (...values: number[]) => values.every((value, i) => bytes[i] === value);
  if (starts(0x89, 0x50, 0x4e, 0x47)) return 'png';
  if (starts(0xff, 0xd8, 0xff)) return 'jpeg';
  if (starts(0x52, 0x49, 0x46, 0x46) && Buffer.from(bytes.subarray(8, 12)).toString('latin1') === 'WEBP')
    return 'webp';
  return outputFormat === 'jpeg' || outputFormat === 'webp' ? outputFormat : 'png';
}

/**
 * An images answer with each `b64_json` image decoded and stored through the sink: `response.data[n]`
 * holds the object's `key` in place of the base64, and `images` lists the keys with each revised prompt,
 * so that no image's bytes reach an output line. Images given as a `url` stay as they are. Storing the
 * same answer again writes the same objects, so a collect run again after a crash leaves each image once.
 */
export async function withStoredImages<T extends BatchOutputItem>(item: T, sink: ImageSink): Promise<T> {
  const data = item.response.data;
  if (!Array.isArray(data)) return item;
  const images: NonNullable<BatchOutputItem['images']> = [];
  const stored: unknown[] = [];
  for (const [index, entry] of data.entries()) {
    const record = asRecord(entry);
    if (!record || typeof record.b64_json !== 'string') {
      stored.push(entry);
      continue;
    }
    const { b64_json: base64, ...rest } = record;
    const bytes = Buffer.from(base64 as string, 'base64');
    const name = imageName(item.id, index, imageExtension(bytes, item.response.output_format));
    const key = await sink.write(name, bytes);
    stored.push({ ...rest, key });
    const revisedPrompt = typeof record.revised_prompt === 'string' ? record.revised_prompt : null;
    images.push({ key, index, revisedPrompt });
  }
  return { ...item, response: { ...item.response, data: stored }, images };
}
