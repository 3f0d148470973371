/**
 * Pillow's (9.4) uint8 resampling, reimplemented so CLIP preprocessing matches the reference
 * bit for bit: separable convolution (horizontal pass first, rounded to uint8 between passes)
 * with the kernel widened by the downscale factor, coefficients in 22-bit fixed point.
 * libvips' bicubic differs by a level or two, which is why this exists.
 */

/** Interleaved 8-bit pixels, row-major. */
export interface PixelImage {
  readonly width: number;
  readonly height: number;
  readonly channels: number;
  readonly data: Uint8Array;
}

const PRECISION_BITS = 32 - 8 - 2;

function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

interface Coefficients {
  readonly ksize: number;
  /** Per output pixel: first input index and tap count. */
  readonly bounds: Int32Array;
  /** Fixed-point taps, `ksize` per output pixel. */
  readonly kk: Int32Array;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for the BICUBIC filter (support 2). */
function precomputeCoeffs(inSize: number, outSize: number): Coefficients {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 2 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    // C's (int) truncates toward zero.
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      k[x] = bicubic((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? k[x] / ww : k[x];
      kk[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * (1 << PRECISION_BITS)) : Math.trunc(0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(v: number): number {
  if (v >= 1 << PRECISION_BITS << 8) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / (1 << PRECISION_BITS));
}

function resampleHorizontal(src: PixelImage, outWidth: number, rowFirst: number, rowCount: number): PixelImage {
  const { ksize, bounds, kk } = precomputeCoeffs(src.width, outWidth);
  const c = src.channels;
  const out = new Uint8Array(outWidth * rowCount * c);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < rowCount; y++) {
    const rowBase = (y + rowFirst) * src.width * c;
    for (let xx = 0; xx < outWidth; xx++) {
      const xmin = bounds[xx * 2];
      const n = bounds[xx * 2 + 1];
      const kOff = xx * ksize;
      for (let ch = 0; ch < c; ch++) {
        let ss = half;
        for (let x = 0; x < n; x++) ss += src.data[rowBase + (x + xmin) * c + ch] * kk[kOff + x];
        out[(y * outWidth + xx) * c + ch] = clip8(ss);
      }
    }
  }
  return { width: outWidth, height: rowCount, channels: c, data: out };
}

function resampleVertical(src: PixelImage, outHeight: number, coeffs: Coefficients, rowShift: number): PixelImage {
  const { ksize, bounds, kk } = coeffs;
  const c = src.channels;
  const w = src.width;
  const out = new Uint8Array(w * outHeight * c);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = bounds[yy * 2] - rowShift;
    const n = bounds[yy * 2 + 1];
    const kOff = yy * ksize;
    for (let x = 0; x < w; x++) {
      for (let ch = 0; ch < c; ch++) {
        let ss = half;
        for (let y = 0; y < n; y++) ss += src.data[((y + ymin) * w + x) * c + ch] * kk[kOff + y];
        out[(yy * w + x) * c + ch] = clip8(ss);
      }
    }
  }
  return { width: w, height: outHeight, channels: c, data: out };
}

/** `Image.resize((width, height), Image.BICUBIC)` for 8-bit images without alpha semantics. */
export function resizeBicubic(src: PixelImage, width: number, height: number): PixelImage {
  if (width === src.width && height === src.height) return src;
  const vert = precomputeCoeffs(src.height, height);
  if (width === src.width) return resampleVertical(src, height, vert, 0);
  // Like Pillow, the horizontal pass only covers the rows the vertical pass reads.
  const first = vert.bounds[0];
  const last = vert.bounds[height * 2 - 2] + vert.bounds[height * 2 - 1];
  const tmp = resampleHorizontal(src, width, first, last - first);
  if (height === src.height) return tmp;
  return resampleVertical(tmp, height, vert, first);
}

/** `Image.resize(size, NEAREST)` (Pillow's ImagingScaleAffine sampling), used for palette images. */
export function resizeNearest(src: PixelImage, width: number, height: number): PixelImage {
  const c = src.channels;
  const out = new Uint8Array(width * height * c);
  const xs = new Int32Array(width);
  const sx = src.width / width;
  let xo = sx * 0.5;
  for (let x = 0; x < width; x++, xo += sx) xs[x] = Math.min(Math.trunc(xo), src.width - 1);
  const sy = src.height / height;
  let yo = sy * 0.5;
  for (let y = 0; y < height; y++, yo += sy) {
    const yi = Math.min(Math.trunc(yo), src.height - 1);
    for (let x = 0; x < width; x++) {
      const s = (yi * src.width + xs[x]) * c;
      const d = (y * width + x) * c;
      for (let ch = 0; ch < c; ch++) out[d + ch] = src.data[s + ch];
    }
  }
  return { width, height, channels: c, data: out };
}

/** Pillow's RGBA -> RGBa (premultiply), which `resize` does around filtering RGBA images. */
export function premultiply(src: PixelImage): PixelImage {
  const d = Uint8Array.from(src.data);
  for (let i = 0; i < d.length; i += 4) {
    const a = d[i + 3];
    for (let ch = 0; ch < 3; ch++) {
      const t = d[i + ch] * a + 128;
      d[i + ch] = ((t >> 8) + t) >> 8;
    }
  }
  return { ...src, data: d };
}

/** Pillow's RGBa -> RGBA. */
export function unpremultiply(src: PixelImage): PixelImage {
  const d = Uint8Array.from(src.data);
  for (let i = 0; i < d.length; i += 4) {
    const a = d[i + 3];
    if (a === 0 || a === 255) continue;
    for (let ch = 0; ch < 3; ch++) d[i + ch] = Math.min(255, Math.trunc((255 * d[i + ch]) / a));
  }
  return { ...src, data: d };
}
