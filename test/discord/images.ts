/** Small real images for the Discord tests, and a handler double that checks image bytes. */
import sharp from 'sharp';
import type { MessageHandler, ReplyImage } from '../../src/conversation/types.ts';

export async function solidPng(r: number, g: number, b: number, size = 16): Promise<Buffer> {
  return sharp({ create: { width: size, height: size, channels: 3, background: { r, g, b } } }).png().toBuffer();
}

/** Random pixels compress badly: a PNG of this size is large enough to need re-encoding. */
export async function noisyPng(side: number): Promise<Buffer> {
  const pixels = Buffer.alloc(side * side * 3);
  for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 2654435761) >>> 24;
  return sharp(pixels, { raw: { width: side, height: side, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer();
}

export function replyImage(data: Buffer, filename: string): ReplyImage {
  return { data, contentType: 'image/png', filename, source: `https://images.example/${filename}` };
}

function isKnownImage(bytes: Buffer): boolean {
  const png = bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  const jpeg = bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff;
  const webp = bytes.subarray(0, 4).toString('latin1') === 'RIFF' && bytes.subarray(8, 12).toString('latin1') === 'WEBP';
  return png || jpeg || webp;
}

/**
 * Stands in for the service handler's decode step: an image whose bytes are not PNG, JPEG or
 * WebP gets an error reply (as the real handler does after failing to decode it).
 */
export const decodingHandlerDouble: MessageHandler = async (message, responder) => {
  for (const image of message.images) {
    const bytes = await image.fetch(1024 * 1024);
    if (!isKnownImage(bytes)) {
      await responder.send({
        kind: 'error',
        segments: [{ type: 'text', text: `I could not read ${image.name}: it is not a valid PNG, JPEG or WebP image.` }],
      });
      return;
    }
  }
  await responder.send({ kind: 'answer', segments: [{ type: 'text', text: `saw ${message.images.length} image(s): ${message.text}` }] });
};
