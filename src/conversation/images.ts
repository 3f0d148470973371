/**
 * Turns user-supplied image bytes into what the model and the history keep: decoded and checked
 * with sharp (decompression bombs refused), EXIF-rotated, first frame only, and re-encoded as a
 * PNG no larger than the model needs. Platform URLs expire, so history stores these bytes.
 */
import { createHash } from 'node:crypto';
import sharp, { type Metadata } from 'sharp';
import { ImageInputError } from './types.ts';

/** Largest decoded image accepted (~ 8k x 8k); bigger inputs are refused before decoding. */
export const MAX_INPUT_PIXELS = 8192 * 8192;

/** Formats accepted from users (sharp's names). */
export const RASTER_FORMATS: ReadonlySet<string> = new Set(['png', 'jpeg', 'webp', 'gif', 'tiff', 'heif']);

/** Shortest side kept in history: >= CLIP's 224 so preprocessing sees near-original pixels. */
export const STORED_SHORT_SIDE = 448;

export interface NormalizedImage {
  /** sha256 hex of `data`. */
  readonly hash: string;
  /** PNG bytes (alpha kept, as FROMAGe's convert('RGB') drops it itself). */
  readonly data: Buffer;
  readonly width: number;
  readonly height: number;
}

export async function normalizeImage(input: Buffer, name = 'image'): Promise<NormalizedImage> {
  if (input.length === 0) throw new ImageInputError(`${name} is empty.`, 'corrupt');
  let meta: Metadata;
  try {
    meta = await sharp(input, { limitInputPixels: MAX_INPUT_PIXELS, pages: 1 }).metadata();
  } catch (err) {
    throw new ImageInputError(`${name} is not an image I can read (${shortReason(err)}).`, 'not-an-image');
  }
  // Photos only: sharp also renders SVG (librsvg: an XML parser with entities and links, a large
  // surface for a file from a stranger) and other formats no one sends as a picture; the web
  // chat's upload check allows the same raster formats (here also TIFF and HEIF, which Slack offers).
  if (!RASTER_FORMATS.has(meta.format ?? ''))
    throw new ImageInputError(`${name} is ${meta.format === 'svg' ? 'an SVG drawing' : `a ${meta.format ?? 'unknown'} file`}, not a photo I can read; send PNG, JPEG, WebP or GIF.`, 'not-an-image');
  if (!meta.width || !meta.height) throw new ImageInputError(`${name} has no size; is it an image?`, 'not-an-image');
  if (meta.width * meta.height > MAX_INPUT_PIXELS)
    throw new ImageInputError(`${name} is ${meta.width}x${meta.height} pixels; the limit is ${MAX_INPUT_PIXELS} pixels.`, 'too-large');
  try {
    const rotated = sharp(input, { limitInputPixels: MAX_INPUT_PIXELS, pages: 1 }).rotate();
    const swap = (meta.orientation ?? 1) >= 5;
    const w = swap ? meta.height : meta.width;
    const h = swap ? meta.width : meta.height;
    const short = Math.min(w, h);
    const pipeline =
      short > STORED_SHORT_SIDE
        ? rotated.resize(w <= h ? { width: STORED_SHORT_SIDE } : { height: STORED_SHORT_SIDE }, undefined)
        : rotated;
    const { data, info } = await pipeline.png({ compressionLevel: 6 }).toBuffer({ resolveWithObject: true });
    return { hash: createHash('sha256').update(data).digest('hex'), data, width: info.width, height: info.height };
  } catch (err) {
    throw new ImageInputError(`${name} could not be decoded (${shortReason(err)}); it may be truncated or corrupt.`, 'corrupt');
  }
}

function shortReason(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split('\n')[0].replace(/^Input buffer /, '').slice(0, 120);
}
