/**
 * Weight-only block quantization packed for onnxruntime's com.microsoft MatMulNBits, and
 * exact float32 -> float16 conversion for fp16 bundles.
 *
 * MatMulNBits computes Y = A[..., K] @ dequant(B)^T -> [..., N]. Its B holds the weight by
 * output row: B is uint8 [N, n_blocks, blob_size] with n_blocks = ceil(K / block_size) and
 * blob_size = block_size * bits / 8, codes packed low bits first along K (for 4 bits,
 * element 2j in the low nibble of byte j). scales are float [N * n_blocks]; zero_points are
 * uint8 [N * ceil(n_blocks * bits / 8)], packed the same way per row (absent = 2^(bits-1)).
 * Dequantized value = (code - zero_point) * scale.
 *
 * A torch nn.Linear weight is [out, in] = [N, K]: exactly B's row order, no transpose.
 */

export type QuantBits = 4 | 8;

export interface MatMulNBitsOptions {
  bits: QuantBits;
  /** Power of two >= 16; default 32. */
  blockSize?: number;
  /** Symmetric: no zero_points input (implicit 2^(bits-1)); default false (asymmetric). */
  symmetric?: boolean;
}

export interface MatMulNBitsWeights {
  /** Attributes of the MatMulNBits node. */
  readonly K: number;
  readonly N: number;
  readonly bits: QuantBits;
  readonly blockSize: number;
  readonly nBlocksPerCol: number;
  readonly blobSize: number;
  /** uint8 [N, nBlocksPerCol, blobSize]. */
  readonly B: Uint8Array;
  readonly bShape: readonly [number, number, number];
  /** float32 [N * nBlocksPerCol]. */
  readonly scales: Float32Array;
  readonly scalesShape: readonly [number];
  /** uint8 [N * ceil(nBlocksPerCol * bits / 8)]; undefined when symmetric. */
  readonly zeroPoints: Uint8Array | undefined;
  readonly zeroPointsShape: readonly [number] | undefined;
}

/** How the float32 weight is laid out: torch Linear [N, K] ('NK') or matmul operand [K, N] ('KN'). */
export type WeightLayout = 'NK' | 'KN';

export function validateBlockSize(blockSize: number): void {
  if (!Number.isInteger(blockSize) || blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) {
    throw new Error(`quantization block size must be a power of two >= 16, got ${blockSize}`);
  }
}

/**
 * Quantizes one weight matrix. `weight` holds K*N floats in `layout` order. Asymmetric
 * blocks widen [min, max] to include 0 so an exact zero stays exact.
 */
export function quantizeMatMulNBits(
  weight: Float32Array,
  K: number,
  N: number,
  layout: WeightLayout,
  options: MatMulNBitsOptions,
): MatMulNBitsWeights {
  const bits = options.bits;
  if (bits !== 4 && bits !== 8) throw new Error(`quantization bits must be 4 or 8, got ${String(bits)}`);
  const blockSize = options.blockSize ?? 32;
  validateBlockSize(blockSize);
  if (weight.length !== K * N) throw new Error(`weight has ${weight.length} values, expected K*N = ${K}*${N}`);
  const symmetric = options.symmetric ?? false;
  const nBlocks = Math.ceil(K / blockSize);
  const blobSize = (blockSize * bits) / 8;
  const maxCode = (1 << bits) - 1;
  const midCode = 1 << (bits - 1);
  const zpBytesPerRow = Math.ceil((nBlocks * bits) / 8);

  const B = new Uint8Array(N * nBlocks * blobSize);
  const scales = new Float32Array(N * nBlocks);
  const zeroPoints = symmetric ? undefined : new Uint8Array(N * zpBytesPerRow);
  const block = new Float32Array(blockSize);
  const codes = new Uint8Array(blockSize);

  for (let n = 0; n < N; n++) {
    for (let b = 0; b < nBlocks; b++) {
      const k0 = b * blockSize;
      const len = Math.min(blockSize, K - k0);
      for (let i = 0; i < len; i++) {
        block[i] = layout === 'NK' ? weight[n * K + k0 + i] : weight[(k0 + i) * N + n];
      }
      let scale: number;
      let zp: number;
      if (symmetric) {
        let amax = 0;
        for (let i = 0; i < len; i++) amax = Math.max(amax, Math.abs(block[i]));
        scale = amax / (midCode - 1) || 1;
        zp = midCode;
      } else {
        let lo = 0;
        let hi = 0;
        for (let i = 0; i < len; i++) {
          lo = Math.min(lo, block[i]);
          hi = Math.max(hi, block[i]);
        }
        scale = (hi - lo) / maxCode || 1;
        zp = Math.min(maxCode, Math.max(0, Math.round(-lo / scale)));
      }
      scale = Math.fround(scale);
      const inv = 1 / scale;
      for (let i = 0; i < blockSize; i++) {
        // Padding past K decodes to exactly 0.
        codes[i] = i < len ? Math.min(maxCode, Math.max(0, Math.round(block[i] * inv) + zp)) : zp;
      }
      const blob = (n * nBlocks + b) * blobSize;
      if (bits === 8) B.set(codes, blob);
      else for (let j = 0; j < blobSize; j++) B[blob + j] = codes[2 * j] | (codes[2 * j + 1] << 4);
      scales[n * nBlocks + b] = scale;
      if (zeroPoints) {
        if (bits === 8) zeroPoints[n * zpBytesPerRow + b] = zp;
        else zeroPoints[n * zpBytesPerRow + (b >> 1)] |= zp << ((b & 1) * 4);
      }
    }
  }
  return {
    K,
    N,
    bits,
    blockSize,
    nBlocksPerCol: nBlocks,
    blobSize,
    B,
    bShape: [N, nBlocks, blobSize],
    scales,
    scalesShape: [N * nBlocks],
    zeroPoints,
    zeroPointsShape: zeroPoints ? [zeroPoints.length] : undefined,
  };
}

/** The float32 weight MatMulNBits will compute with, as [N, K] (for error estimates and tests). */
export function dequantizeMatMulNBits(q: MatMulNBitsWeights): Float32Array {
  const { K, N, bits, blockSize, nBlocksPerCol: nBlocks, blobSize } = q;
  const out = new Float32Array(N * K);
  const zpBytesPerRow = Math.ceil((nBlocks * bits) / 8);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < nBlocks; b++) {
      const scale = q.scales[n * nBlocks + b];
      let zp = 1 << (bits - 1);
      if (q.zeroPoints) {
        const byte = q.zeroPoints[n * zpBytesPerRow + (bits === 8 ? b : b >> 1)];
        zp = bits === 8 ? byte : (byte >> ((b & 1) * 4)) & 0xf;
      }
      const blob = (n * nBlocks + b) * blobSize;
      for (let i = 0; i < blockSize && b * blockSize + i < K; i++) {
        const code = bits === 8 ? q.B[blob + i] : (q.B[blob + (i >> 1)] >> ((i & 1) * 4)) & 0xf;
        out[n * K + b * blockSize + i] = Math.fround((code - zp) * scale);
      }
    }
  }
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE binary16 bits of a float32 value, rounded to nearest even (overflow -> infinity). */
export function float32ToFloat16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Half subnormal (or zero): shift the full significand into place, rounding to even.
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    let h = m >>> shift;
    if (rem > halfway || (rem === halfway && (h & 1) === 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++;
  return sign | h;
}

export function float32ArrayToFloat16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = float32ToFloat16Bits(src[i]);
  return out;
}
