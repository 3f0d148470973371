/**
 * CLIP image preprocessing as FROMAGe does it (`feature_extractor(img.convert('RGB'))` with
 * HF's CLIPImageProcessor): decode with sharp, convert to RGB as Pillow's `convert('RGB')`
 * (alpha dropped without compositing, grey replicated), shortest side to `size` at HF's
 * truncated size, Pillow-exact bicubic, HF's center crop, `u8 * rescale` then
 * `(x - mean) / std` in float32, CHW.
 *
 * Deliberate differences from the reference, for chat uploads: EXIF orientation is applied
 * (Pillow's Image.open ignores it, so phone photos would reach the model sideways), and only
 * raster formats are accepted (no SVG/PDF rendering), with a decoded-pixel limit against
 * decompression bombs.
 */
import sharp from 'sharp';
import { ImageInputError } from '../conversation/types.ts';
import { premultiply, resizeBicubic, resizeNearest, unpremultiply, type PixelImage } from './pil-resize.ts';

export interface PreprocessConfig {
  readonly size: number;
  readonly cropSize: number;
  readonly rescaleFactor: number;
  readonly mean: readonly number[];
  readonly std: readonly number[];
}

/** `convert_rgb`: Image.open(f).convert('RGB'). `demo_upload`: demo/app.py's `.resize((224, 224))` first. */
export type LoadMode = 'convert_rgb' | 'demo_upload';

export interface DecodeOptions {
  /** Most decoded pixels (width x height) accepted. Default 64 M. */
  readonly maxPixels?: number;
}

export const DEFAULT_MAX_PIXELS = 64 * 1024 * 1024;
/** The square size demo/app.py resizes uploads to. */
export const DEMO_UPLOAD_SIZE = 224;

const ACCEPTED_FORMATS = new Set(['jpeg', 'png', 'webp', 'gif', 'tiff']);

interface Decoded {
  /** RGB or RGBA pixels, as Pillow holds the opened image before `convert('RGB')`. */
  readonly image: PixelImage;
  /** Palette images: Pillow resizes them with NEAREST. */
  readonly palette: boolean;
}

/** Decodes the first frame, oriented, as 8-bit RGB(A). Errors are ImageInputErrors. */
export async function decodeImage(data: Buffer, options: DecodeOptions = {}): Promise<Decoded> {
  if (data.length === 0) throw new ImageInputError('the image is empty (0 bytes)', 'not-an-image');
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  try {
    const input = sharp(data, { limitInputPixels: maxPixels, failOn: 'error', ignoreIcc: true, pages: 1, autoOrient: true });
    const meta = await input.metadata();
    if (!meta.format || !ACCEPTED_FORMATS.has(meta.format)) {
      throw new ImageInputError(`unsupported image format ${meta.format ?? 'unknown'} (send a JPEG, PNG, WebP, GIF or TIFF)`, 'not-an-image');
    }
    // sRGB output replicates grey (and grey+alpha) into RGB(A), as convert('RGB') does.
    const { data: pixels, info } = await input.toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
    if (info.channels !== 3 && info.channels !== 4) throw new ImageInputError(`unsupported image layout (${info.channels} channels)`, 'not-an-image');
    const image: PixelImage = { width: info.width, height: info.height, channels: info.channels, data: new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.length) };
    return { image, palette: meta.isPalette === true };
  } catch (err) {
    if (err instanceof ImageInputError) throw err;
    throw classifySharpError(err as Error, maxPixels);
  }
}

function classifySharpError(err: Error, maxPixels: number): ImageInputError {
  const msg = err.message;
  if (/pixel limit/i.test(msg)) {
    return new ImageInputError(`the image is too large: more than ${maxPixels} pixels once decoded`, 'too-large');
  }
  if (/unsupported image format/i.test(msg)) return new ImageInputError('the file is not an image', 'not-an-image');
  return new ImageInputError(`the image is corrupt or truncated (${msg.split('\n')[0]})`, 'corrupt');
}

/** Pillow's `convert('RGB')` from RGBA: the alpha channel is dropped, colours kept as stored. */
export function dropAlpha(img: PixelImage): PixelImage {
  if (img.channels === 3) return img;
  if (img.channels !== 4) throw new Error(`expected 3 or 4 channels, got ${img.channels}`);
  const n = img.width * img.height;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    out[i * 3] = img.data[i * 4];
    out[i * 3 + 1] = img.data[i * 4 + 1];
    out[i * 3 + 2] = img.data[i * 4 + 2];
  }
  return { width: img.width, height: img.height, channels: 3, data: out };
}

/** HF's get_resize_output_image_size(default_to_square=False): (short, long) -> (S, int(S*long/short)). */
export function shortestEdgeSize(width: number, height: number, size: number): { width: number; height: number } {
  if (width <= height) return { width: size, height: Math.trunc((size * height) / width) };
  return { width: Math.trunc((size * width) / height), height: size };
}

export interface Preprocessed {
  /** float32 CHW, crop_size x crop_size. */
  readonly pixelValues: Float32Array;
  /** The RGB image after the shortest-side resize (before cropping), for checks. */
  readonly resized: PixelImage;
  readonly cropTop: number;
  readonly cropLeft: number;
}

/** Everything after decoding: the load mode's resize, convert('RGB'), then the CLIP processor. */
export function preprocessDecoded(decoded: Decoded, cfg: PreprocessConfig, mode: LoadMode = 'convert_rgb'): Preprocessed {
  let img = decoded.image;
  if (mode === 'demo_upload') img = pillowResize(img, decoded.palette, DEMO_UPLOAD_SIZE, DEMO_UPLOAD_SIZE);
  const rgb = dropAlpha(img);
  const target = shortestEdgeSize(rgb.width, rgb.height, cfg.size);
  const resized = resizeBicubic(rgb, target.width, target.height);
  return { ...normalizeCrop(resized, cfg), resized };
}

/** Pillow's Image.resize with its default filter for the image's mode. */
function pillowResize(img: PixelImage, palette: boolean, width: number, height: number): PixelImage {
  if (img.width === width && img.height === height) return img;
  if (palette) return resizeNearest(img, width, height);
  if (img.channels === 4) return unpremultiply(resizeBicubic(premultiply(img), width, height));
  return resizeBicubic(img, width, height);
}

/** Center crop (HF offsets) + rescale + normalize, float32 CHW. */
export function normalizeCrop(img: PixelImage, cfg: PreprocessConfig): { pixelValues: Float32Array; cropTop: number; cropLeft: number } {
  const S = cfg.cropSize;
  if (img.width < S || img.height < S) throw new Error(`resized image ${img.width}x${img.height} is smaller than the crop ${S}`);
  const top = Math.floor((img.height - S) / 2);
  const left = Math.floor((img.width - S) / 2);
  const out = new Float32Array(3 * S * S);
  const mean = cfg.mean.map(Math.fround);
  const std = cfg.std.map(Math.fround);
  for (let ch = 0; ch < 3; ch++) {
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        const u8 = img.data[((y + top) * img.width + (x + left)) * img.channels + ch];
        // numpy: uint8 * python float is float64, cast to float32; then float32 arithmetic.
        const v = Math.fround(u8 * cfg.rescaleFactor);
        out[(ch * S + y) * S + x] = Math.fround(Math.fround(v - mean[ch]) / std[ch]);
      }
    }
  }
  return { pixelValues: out, cropTop: top, cropLeft: left };
}

export async function preprocessImage(data: Buffer, cfg: PreprocessConfig, mode: LoadMode = 'convert_rgb', options: DecodeOptions = {}): Promise<Preprocessed> {
  return preprocessDecoded(await decodeImage(data, options), cfg, mode);
}
