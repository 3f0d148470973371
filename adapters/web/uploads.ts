/**
 * Images sent from the page: counted and sized before they are read, recognised by their first
 * bytes before anything decodes them, then normalised as every platform's images are.
 */
import { normalizeImage } from '../../src/conversation/images.ts';
import { UserFacingError } from '../../src/conversation/errors.ts';
import { ImageInputError } from '../../src/conversation/types.ts';

export class WebUploadError extends UserFacingError {}

export interface UploadLimits {
  readonly maxImagesPerMessage: number;
  readonly maxImageBytes: number;
}

export interface AcceptedImage {
  readonly name: string;
  readonly hash: string;
  /** Normalised PNG bytes, as the history keeps them. */
  readonly data: Buffer;
  readonly width: number;
  readonly height: number;
}

/** The raster formats browsers show and sharp reads; anything else (SVG included) is refused. */
export function sniffImageType(bytes: Uint8Array): 'image/png' | 'image/jpeg' | 'image/gif' | 'image/webp' | undefined {
  const at = (i: number, ...b: number[]) => b.every((v, k) => bytes[i + k] === v);
  if (at(0, 0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return 'image/png';
  if (at(0, 0xff, 0xd8, 0xff)) return 'image/jpeg';
  if (at(0, 0x47, 0x49, 0x46, 0x38)) return 'image/gif';
  if (at(0, 0x52, 0x49, 0x46, 0x46) && at(8, 0x57, 0x45, 0x42, 0x50)) return 'image/webp';
  return undefined;
}

/** Throws `WebUploadError` with a message for the page when a file is not acceptable. */
export async function acceptUploads(files: readonly File[], limits: UploadLimits): Promise<AcceptedImage[]> {
  if (files.length > limits.maxImagesPerMessage)
    throw new WebUploadError(`You attached ${files.length} images; the limit is ${limits.maxImagesPerMessage} per message. Remove some and send again.`);
  for (const file of files)
    if (file.size > limits.maxImageBytes)
      throw new WebUploadError(`${displayName(file)} is ${mib(file.size)}; the limit is ${mib(limits.maxImageBytes)} per image. Choose a smaller image.`);
  const accepted: AcceptedImage[] = [];
  for (const file of files) {
    const name = displayName(file);
    const head = new Uint8Array(await file.slice(0, 16).arrayBuffer());
    if (!sniffImageType(head)) throw new WebUploadError(`${name} is not an image I can read; send a PNG, JPEG, GIF or WebP file.`);
    try {
      const normalized = await normalizeImage(Buffer.from(await file.arrayBuffer()), name);
      accepted.push({ name, hash: normalized.hash, data: normalized.data, width: normalized.width, height: normalized.height });
    } catch (err) {
      if (err instanceof ImageInputError) throw new WebUploadError(`${err.message} Choose another image.`);
      throw err;
    }
  }
  return accepted;
}

function displayName(file: File): string {
  // Shown as text by the page; only trimmed here so a long name cannot flood a message.
  const name = [...(file.name || 'image')].filter((ch) => ch >= ' ' && ch !== '\u007f').join('').trim() || 'image';
  return name.length > 80 ? `${name.slice(0, 77)}...` : name;
}

function mib(n: number): string {
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}
