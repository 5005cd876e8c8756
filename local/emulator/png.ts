import { deflateSync } from 'node:zlib';
import { hash32 } from './random';

/** The eight bytes every PNG file starts with. */
export const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Sides longer than this give the small fixed image instead: a picture the emulator draws stays cheap. */
const MAX_SIDE = 2048;
/** The side of the image drawn when the request names no size the emulator draws (`auto`, none, odd). */
export const FALLBACK_SIDE = 64;

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** The CRC-32 (ISO-HDLC, as PNG uses it) of some bytes. */
export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of bytes) c = (CRC_TABLE[(c ^ byte) & 0xff] ?? 0) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const typed = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(typed));
  return Buffer.concat([length, typed, crc]);
}

/** Width and height from a size such as `1024x1536`; the small fixed size for `auto`, none or too large. */
export function dimensionsOf(size: unknown): { width: number; height: number } {
  const match = typeof size === 'string' ? /^(\d{1,5})x(\d{1,5})$/.exec(size) : null;
  const width = Number(match?.[1] ?? 0);
  const height = Number(match?.[2] ?? 0);
  if (width < 1 || height < 1 || width > MAX_SIDE || height > MAX_SIDE)
    return { width: FALLBACK_SIDE, height: FALLBACK_SIDE };
  return { width, height };
}

/**
 * A valid RGB PNG of the given size, the same bytes for the same seed: a background colour and a band
 * of another, both from the seed. Rows are alike, so even 1536x1024 deflates to a few kilobytes.
 */
export function pngOf(width: number, height: number, seed: number): Buffer {
  const colour = (i: number) => {
    const h = hash32(seed, i);
    return [h & 0xff, (h >>> 8) & 0xff, (h >>> 16) & 0xff] as const;
  };
  const [background, band] = [colour(0), colour(1)];
  const bandTop = Math.floor(height / 3);
  const bandBottom = Math.floor((2 * height) / 3);
  const stride = 1 + width * 3;
  const raw = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const [r, g, b] = y >= bandTop && y < bandBottom ? band : background;
    const row = y * stride; // filter byte 0 (None) stays as allocated
    for (let x = 0; x < width; x++) {
      const at = row + 1 + x * 3;
      raw[at] = r;
      raw[at + 1] = g;
      raw[at + 2] = b;
    }
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // colour type: truecolour (RGB)
  // compression, filter and interlace methods stay 0
  return Buffer.concat([
    PNG_SIGNATURE,
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
