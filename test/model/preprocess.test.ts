import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32, deflateSync } from 'node:zlib';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { ImageInputError } from '../../src/conversation/types.ts';
import { decodeImage, preprocessImage, shortestEdgeSize, type LoadMode } from '../../src/model/preprocess.ts';
import { FIXTURES, maxAbsDiff, refJson, refTensor } from './reference.ts';

interface PreCases {
  size: { shortest_edge: number };
  crop_size: { height: number };
  rescale_factor: number;
  image_mean: number[];
  image_std: number[];
  images: { file: string; mode: string; width: number; height: number; resized_hw: [number, number]; crop_top_left: [number, number]; tensors: string[] }[];
}
const pre = refJson<PreCases>('preprocess_cases.json');
const cfg = { size: pre.size.shortest_edge, cropSize: pre.crop_size.height, rescaleFactor: pre.rescale_factor, mean: pre.image_mean, std: pre.image_std };
const read = (f: string): Buffer => readFileSync(join(FIXTURES, f));

// Our resize is a port of Pillow's, so the resized uint8 matches exactly and pixel values
// match to float32 rounding (the fixture stores float32; 1e-6 is generous).
const PX_TOL = 1e-6;

describe('CLIP preprocessing (preprocess_cases.json)', () => {
  for (const img of pre.images) {
    it(`${img.file} (${img.mode} ${img.width}x${img.height})`, async () => {
      const out = await preprocessImage(read(img.file), cfg);
      expect([out.resized.height, out.resized.width]).toEqual(img.resized_hw);
      expect([out.cropTop, out.cropLeft]).toEqual(img.crop_top_left);
      const base = img.file.split('/')[1].replace('.', '_');
      const resizedName = `pre.${base}.resized`;
      if (img.tensors.includes(resizedName)) {
        // The resize gap alone (Pillow's uint8 vs ours), measured apart from normalization.
        expect(maxAbsDiff(out.resized.data, refTensor(resizedName).data)).toBe(0);
      }
      const decodedName = `pre.${base}.decoded_rgb`;
      if (img.tensors.includes(decodedName)) {
        const dec = await decodeImage(read(img.file));
        expect(maxAbsDiff(dec.image.data, refTensor(decodedName).data)).toBe(0);
      }
      const px = img.tensors.find((t) => t.startsWith('px.'))!;
      expect(maxAbsDiff(out.pixelValues, refTensor(px).data)).toBeLessThan(PX_TOL);
    });
  }

  it.each([
    ['images/dialogue_1.png', 'demo_upload'],
    ['images/dialogue_2.jpg', 'demo_upload'],
    ['img/00015.png', 'convert_rgb'],
  ] as const)('%s (%s) as the cases load it', async (file, mode: LoadMode) => {
    const out = await preprocessImage(read(file), cfg, mode);
    const name = `px.${file.replace(/[/.]/g, '_')}.${mode}`;
    expect(maxAbsDiff(out.pixelValues, refTensor(name).data)).toBeLessThan(PX_TOL);
  });

  it('replicates a grey image into RGB', async () => {
    const out = await preprocessImage(read('images/gray.png'), cfg);
    const plane = 32 * 32;
    // Same u8 in every channel: (x - mean_c) / std_c inverts to the same value.
    for (const i of [0, 100, 517]) {
      const u = [0, 1, 2].map((c) => out.pixelValues[c * plane + i] * cfg.std[c] + cfg.mean[c]);
      expect(u[1]).toBeCloseTo(u[0], 5);
      expect(u[2]).toBeCloseTo(u[0], 5);
    }
  });

  it('computes the shortest-edge size with truncation', () => {
    expect(shortestEdgeSize(10, 7, 32)).toEqual({ width: 45, height: 32 });
    expect(shortestEdgeSize(72, 112, 32)).toEqual({ width: 32, height: 49 });
    expect(shortestEdgeSize(224, 224, 224)).toEqual({ width: 224, height: 224 });
  });

  it('applies EXIF orientation', async () => {
    const raw = await sharp(read('images/landscape.png')).jpeg().withMetadata({ orientation: 6 }).toBuffer();
    const dec = await decodeImage(raw);
    expect([dec.image.width, dec.image.height]).toEqual([80, 120]);
  });

  it('takes the first frame of an animation', async () => {
    const frame = (r: number): Promise<Buffer> => sharp({ create: { width: 8, height: 8, channels: 3, background: { r, g: 0, b: 0 } } }).png().toBuffer();
    const gif = await sharp([await frame(255), await frame(0)], { join: { animated: true } }).gif().toBuffer();
    const dec = await decodeImage(gif);
    expect([dec.image.width, dec.image.height]).toEqual([8, 8]);
    expect(dec.image.data[0]).toBeGreaterThan(200);
  });
});

function pngChunk(type: string, body: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  const tb = Buffer.concat([Buffer.from(type, 'ascii'), body]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(tb));
  return Buffer.concat([len, tb, crc]);
}

/** A PNG header claiming `w` x `h` pixels with almost no data: a decompression-bomb stand-in. */
function hugePng(w: number, h: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), pngChunk('IHDR', ihdr), pngChunk('IDAT', deflateSync(Buffer.alloc(16))), pngChunk('IEND', Buffer.alloc(0))]);
}

describe('bad images', () => {
  const expectImageError = async (data: Buffer, reason: ImageInputError['reason'], message: RegExp): Promise<void> => {
    const err = await preprocessImage(data, cfg).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageInputError);
    expect((err as ImageInputError).reason).toBe(reason);
    expect((err as Error).message).toMatch(message);
  };

  it('rejects an empty file', () => expectImageError(Buffer.alloc(0), 'not-an-image', /empty/));
  it('rejects a non-image (an HTML 404 body)', () => expectImageError(read('img/gone_00001.png'), 'not-an-image', /not an image/));
  it('rejects a truncated JPEG', () => {
    const jpg = read('images/portrait.jpg');
    return expectImageError(jpg.subarray(0, Math.floor(jpg.length / 2)), 'corrupt', /corrupt or truncated/);
  });
  it('rejects a truncated PNG', () => {
    const png = read('images/landscape.png');
    return expectImageError(png.subarray(0, Math.floor(png.length * 0.6)), 'corrupt', /corrupt or truncated/);
  });
  it('rejects corrupt bytes behind a valid signature', () => {
    const png = Buffer.from(read('images/landscape.png'));
    png.fill(0x55, 40, 400);
    return expectImageError(png, 'corrupt', /corrupt or truncated/);
  });
  it('rejects a 30000x30000 image before decoding it', () => expectImageError(hugePng(30000, 30000), 'too-large', /too large/));
  it('rejects SVG instead of rendering it', () =>
    expectImageError(Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'), 'not-an-image', /unsupported image format svg/));
});
