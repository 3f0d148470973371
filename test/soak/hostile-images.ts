/**
 * Hostile image files for the fuzz run, made with sharp and byte surgery: truncations, bit
 * flips, wrong names and types, decompression bombs in every format (within the pixel limit:
 * they decode to hundreds of MB; beyond it: headers that claim 60000 x 60000), animated,
 * CMYK, 16-bit, corrupt EXIF, SVG/PDF/HTML named .png, and polyglots.
 */
import { crc32 } from 'node:zlib';
import sharp, { type Sharp } from 'sharp';

export interface HostileFile {
  readonly label: string;
  readonly name: string;
  readonly contentType: string;
  readonly data: Buffer;
}

export const FORMATS = ['png', 'jpeg', 'webp', 'gif', 'tiff'] as const;
export type Format = (typeof FORMATS)[number];

const EXT: Record<Format, string> = { png: 'png', jpeg: 'jpg', webp: 'webp', gif: 'gif', tiff: 'tif' };
const TYPE: Record<Format, string> = { png: 'image/png', jpeg: 'image/jpeg', webp: 'image/webp', gif: 'image/gif', tiff: 'image/tiff' };

function encode(img: Sharp, format: Format): Promise<Buffer> {
  if (format === 'tiff') return img.tiff({ compression: 'deflate' }).toBuffer();
  if (format === 'webp') return img.webp({ lossless: true }).toBuffer();
  if (format === 'png') return img.png({ compressionLevel: 9 }).toBuffer();
  return img[format]().toBuffer();
}

export async function plain(format: Format, width: number, height: number, colour = { r: 90, g: 140, b: 30 }): Promise<Buffer> {
  return encode(sharp({ create: { width, height, channels: 3, background: colour } }), format);
}

const bombs = new Map<Format, Buffer>();

/** A file that decodes to 6000 x 6000 (108 MB of pixels) from a small download: within the limit, so it must be decoded safely. */
export async function bomb(format: Format): Promise<Buffer> {
  let b = bombs.get(format);
  if (!b) {
    b = await encode(sharp({ create: { width: 6000, height: 6000, channels: 3, background: 'white' } }), format);
    bombs.set(format, b);
  }
  return b;
}

/** Rewrites a PNG's IHDR size (and its CRC) to claim `width` x `height`. */
export function pngClaiming(png: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(png);
  out.writeUInt32BE(width, 16);
  out.writeUInt32BE(height, 20);
  out.writeUInt32BE(crc32(out.subarray(12, 29)), 29);
  return out;
}

/** Rewrites a GIF's logical screen and first image descriptor sizes. */
export function gifClaiming(gif: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(gif);
  out.writeUInt16LE(width, 6);
  out.writeUInt16LE(height, 8);
  const descriptor = out.indexOf(0x2c, 13);
  if (descriptor > 0 && descriptor + 9 < out.length) {
    out.writeUInt16LE(width, descriptor + 5);
    out.writeUInt16LE(height, descriptor + 7);
  }
  return out;
}

/** Rewrites a baseline JPEG's frame header (SOF0/SOF2) size. */
export function jpegClaiming(jpeg: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(jpeg);
  for (let i = 2; i + 9 < out.length; ) {
    if (out[i] !== 0xff) break;
    const marker = out[i + 1];
    const length = out.readUInt16BE(i + 2);
    if (marker === 0xc0 || marker === 0xc2) {
      out.writeUInt16BE(height, i + 5);
      out.writeUInt16BE(width, i + 7);
      return out;
    }
    i += 2 + length;
  }
  return out;
}

export async function animated(format: 'gif' | 'webp', frames: number): Promise<Buffer> {
  const pages = await Promise.all(
    Array.from({ length: frames }, (_, i) => sharp({ create: { width: 48, height: 48, channels: 3, background: { r: (i * 40) % 255, g: 80, b: 160 } } }).png().toBuffer()),
  );
  return sharp(pages, { join: { animated: true } })[format]({ loop: 0 }).toBuffer();
}

/** A JPEG whose EXIF block is overwritten with `noise` (same length, so the file still parses). */
export async function corruptExif(noise: (i: number) => number): Promise<Buffer> {
  const jpeg = await sharp({ create: { width: 40, height: 30, channels: 3, background: 'teal' } }).withMetadata({ orientation: 6 }).jpeg().toBuffer();
  const out = Buffer.from(jpeg);
  const exif = out.indexOf(Buffer.from('Exif\0\0'));
  if (exif < 0) return out;
  const length = out.readUInt16BE(exif - 2) - 2;
  for (let i = exif + 6; i < exif + length && i < out.length; i++) out[i] = noise(i) & 0xff;
  return out;
}

export const SVG_NAMED_PNG = (canary: string) =>
  Buffer.from(
    `<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>` +
      `<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="64" height="64">` +
      `<image xlink:href="${canary}/svg-image.png" width="64" height="64"/><text>&c;</text>` +
      `<use xlink:href="${canary}/svg-use.svg#x"/></svg>`,
  );

export const HUGE_SVG = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="200000" height="200000"><rect width="100%" height="100%"/></svg>');
export const PDF = Buffer.from('%PDF-1.4\n1 0 obj<< /Type /Catalog >>endobj\ntrailer<< /Root 1 0 R >>\n%%EOF\n');
export const HTML = (canary: string) => Buffer.from(`<!doctype html><html><body><img src="${canary}/html.png"><script>fetch("${canary}/js")</script></body></html>`);

/** A GIF header that is also an HTML/JS file, and a PNG with a zip and a script appended. */
export async function polyglots(canary: string): Promise<Buffer[]> {
  const gifJs = Buffer.concat([Buffer.from('GIF89a/*'), Buffer.alloc(16, 0x20), Buffer.from(`*/=1;fetch("${canary}/poly")//<script src="${canary}/poly.js"></script>`)]);
  const png = await plain('png', 24, 24);
  const zip = Buffer.from('504b0304140000000000000000000000000000000000000000000500000068656c6c6f', 'hex');
  return [gifJs, Buffer.concat([png, zip, Buffer.from(`<script src="${canary}/tail.js"></script>`)])];
}

export { EXT, TYPE };
