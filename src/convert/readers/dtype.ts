/**
 * Element types the readers understand, their sizes, and exact upcasts to float32.
 * fp16 and bf16 are widened by bit manipulation so that every stored value, subnormals,
 * infinities and NaN payloads included, comes out exactly as the checkpoint holds it.
 */
import type { SourceDType } from '../tensor-source.ts';

export const DTYPE_BYTES: Readonly<Record<SourceDType, number>> = {
  float32: 4,
  float16: 2,
  bfloat16: 2,
  int64: 8,
  int32: 4,
  uint8: 1,
  int8: 1,
  bool: 1,
};

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Exact value of one IEEE binary16 bit pattern. */
export function halfBitsToFloat(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >> 10) & 0x1f;
  let mant = h & 0x3ff;
  let bits: number;
  if (exp === 0x1f) {
    bits = sign | 0x7f800000 | (mant << 13);
  } else if (exp !== 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant === 0) {
    bits = sign;
  } else {
    // Subnormal half: normalise the mantissa; every half subnormal is a normal float32.
    let e = 113;
    while ((mant & 0x400) === 0) {
      mant <<= 1;
      e--;
    }
    bits = sign | (e << 23) | ((mant & 0x3ff) << 13);
  }
  u32Scratch[0] = bits >>> 0;
  return f32Scratch[0];
}

let halfTable: Float32Array | undefined;

/** All 65536 half values, built once (256 KB) so bulk upcasts are a table lookup. */
function halfLookup(): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) halfTable[i] = halfBitsToFloat(i);
  }
  return halfTable;
}

/** Little-endian 16-bit words of `bytes` (copied when unaligned). */
function u16View(bytes: Uint8Array): Uint16Array {
  if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 1);
  return new Uint16Array(bytes.slice().buffer, 0, bytes.byteLength >> 1);
}

export function float16ToFloat32(bytes: Uint8Array): Float32Array {
  const src = u16View(bytes);
  const table = halfLookup();
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = table[src[i]];
  return out;
}

export function bfloat16ToFloat32(bytes: Uint8Array): Float32Array {
  const src = u16View(bytes);
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return out;
}

/** Any stored dtype as float32; integer types convert by value (int64 via Number). */
export function toFloat32(dtype: SourceDType, bytes: Uint8Array): Float32Array {
  switch (dtype) {
    case 'float32':
      if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
      return new Float32Array(bytes.slice().buffer);
    case 'float16':
      return float16ToFloat32(bytes);
    case 'bfloat16':
      return bfloat16ToFloat32(bytes);
    case 'int64': {
      const src = new BigInt64Array(bytes.slice().buffer);
      return Float32Array.from(src, (v) => Number(v));
    }
    case 'int32':
      return Float32Array.from(new Int32Array(bytes.slice().buffer));
    case 'int8':
      return Float32Array.from(new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    case 'uint8':
    case 'bool':
      return Float32Array.from(bytes);
  }
}
