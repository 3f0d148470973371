/**
 * Fits images under the per-file upload limit the platform gives (interactions carry
 * `attachment_size_limit`; 10 MiB otherwise): re-encode as JPEG, then downscale until it fits.
 */
import sharp, { type Metadata } from 'sharp';
import type { ReplyImage } from '../../src/conversation/types.ts';

export const DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024;

const MIN_SIDE = 64;

/** Resolves to an image of at most `limit` bytes, or null when even a tiny JPEG does not fit. */
export async function fitToUploadLimit(image: ReplyImage, limit: number): Promise<ReplyImage | null> {
  if (image.data.length <= limit) return image;
  let meta: Metadata;
  try {
    meta = await sharp(image.data).metadata();
  } catch {
    return null;
  }
  let width = meta.width ?? 0;
  let height = meta.height ?? 0;
  let quality = 85;
  let data = image.data;
  for (let attempt = 0; attempt < 8; attempt++) {
    // flatten: JPEG has no alpha; transparent retrieval images would otherwise turn black.
    const encoded = await sharp(image.data)
      .rotate()
      .resize({ width: Math.max(1, Math.round(width)), height: Math.max(1, Math.round(height)), fit: 'inside' })
      .flatten({ background: '#ffffff' })
      .jpeg({ quality, mozjpeg: true })
      .toBuffer({ resolveWithObject: true });
    data = encoded.data;
    if (data.length <= limit) {
      return {
        ...image,
        data,
        contentType: 'image/jpeg',
        filename: image.filename.replace(/\.[A-Za-z0-9]+$/, '') + '.jpg',
        width: encoded.info.width,
        height: encoded.info.height,
      };
    }
    // Bytes scale roughly with the pixel count: shrink both sides by the square root of the excess.
    const scale = Math.min(0.9, Math.sqrt(limit / data.length) * 0.95);
    width *= scale;
    height *= scale;
    quality = Math.max(60, quality - 5);
    if (Math.min(width, height) < MIN_SIDE) break;
  }
  return null;
}
