/**
 * Compact storage of a kept KV prefix. One buffer per entry; blocks in the order tensor j
 * (key, value per layer), then head h; each block holds its positions contiguously, so a
 * shorter prefix of the entry is read without touching the rest:
 *
 * - fp32: exact (4 bytes per value);
 * - fp16: IEEE half, round to nearest even (2 bytes; relative error <= 2^-11 in the normal range);
 * - int8: per row (one position of one head) a float32 scale = max|v| / 127, then the rounded
 *   quotients (1 byte per value + 4 bytes per row; error <= scale / 2 per value).
 *
 * Which one is the default is a measurement (bench/kv-store.bench.ts, docs/runtime.md "Kept caches").
 */
import type { KvReader, KvShape, KvWriter } from './kv-types.ts';

export const KV_CODECS = ['fp32', 'fp16', 'int8'] as const;
export type KvCodecName = (typeof KV_CODECS)[number];

/** A kept prefix in compact form: positions [0, length) of every tensor and head. */
export interface EncodedKv {
  readonly codec: KvCodecName;
  readonly shape: KvShape;
  readonly length: number;
  /** Starts at offset 0 of its own ArrayBuffer (typed views over it stay aligned). */
  readonly data: Uint8Array;
}

function blocks(shape: KvShape): number {
  return 2 * shape.layers * shape.heads;
}

/** Bytes an entry of `length` positions takes in `codec`. */
export function encodedBytes(shape: KvShape, length: number, codec: KvCodecName): number {
  const values = blocks(shape) * length * shape.headDim;
  if (codec === 'fp32') return values * 4;
  if (codec === 'fp16') return values * 2;
  return blocks(shape) * length * 4 + values;
}

/** Bytes per kept position in `codec` (the unit budgets are explained in). */
export function bytesPerPosition(shape: KvShape, codec: KvCodecName): number {
  return encodedBytes(shape, 1, codec);
}

// float32 bits <-> float16 bits. Decoding goes through a 64 Ki-entry table (one lookup per value).
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function halfBits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const full = mant | 0x800000;
    const shift = 14 - e;
    let half = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1) !== 0)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1) !== 0)) half++;
  return sign | half;
}

let halfTable: Float32Array | undefined;
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) t[h] = sign * mant * 2 ** -24;
    else if (exp === 0x1f) t[h] = mant === 0 ? sign * Infinity : NaN;
    else t[h] = sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  halfTable = t;
  return t;
}

/** float32 -> float16 bits (round to nearest even), exported for the tests. */
export function toHalf(v: number): number {
  f32[0] = v;
  return halfBitsFast(u32[0]);
}

export function fromHalf(h: number): number {
  return halfToFloatTable()[h & 0xffff];
}

/**
 * The common case (a half-precision normal result) by integer rounding: adding 0xfff plus the
 * lowest kept bit rounds the 13 dropped bits to nearest even, and a carry ripples into the
 * exponent as it should. Everything else goes through halfBits.
 */
function halfBitsFast(bits: number): number {
  const exp = (bits >>> 23) & 0xff;
  if (exp > 112 && exp < 143) {
    const r = bits + 0xfff + ((bits >>> 13) & 1);
    return ((bits >>> 16) & 0x8000) | (((r & 0x7fffffff) >>> 13) - (112 << 10));
  }
  return halfBits(bits);
}

/** A kept entry whose first `length` positions equal the new sequence's (same keys). */
export interface EncodeBase {
  readonly kv: EncodedKv;
  readonly length: number;
}

/**
 * Copies positions [0, length) of `reader` into a new entry. With `base`, positions
 * [0, base.length) are copied from that entry's encoded bytes (same codec and shape) and only
 * the rest is read and encoded: keeping turn n of a dialogue costs its new positions only.
 */
export function encodeKv(reader: KvReader, length: number, codec: KvCodecName, base?: EncodeBase): EncodedKv {
  const shape = reader.shape;
  if (length > reader.length) throw new RangeError(`cannot keep ${length} positions of a cache that holds ${reader.length}`);
  const usable = base && base.kv.codec === codec && sameShape(base.kv.shape, shape) ? Math.min(base.length, base.kv.length, length) : 0;
  const { heads, headDim } = shape;
  const run = length * headDim;
  const data = new Uint8Array(encodedBytes(shape, length, codec));
  const nBlocks = blocks(shape);
  const from = usable * headDim;
  const stride = usable > 0 ? base!.kv.length * headDim : 0;
  const srcOf = (b: number) => reader.read(Math.floor(b / heads), b % heads, usable, length);
  if (codec === 'fp32' || codec === 'fp16') {
    const width = codec === 'fp32' ? 4 : 2;
    for (let b = 0; b < nBlocks; b++) {
      if (usable > 0) data.set(base!.kv.data.subarray(b * stride * width, (b * stride + from) * width), b * run * width);
      if (usable === length) continue;
      const src = srcOf(b);
      if (codec === 'fp32') {
        new Float32Array(data.buffer, (b * run + from) * 4, run - from).set(src.subarray(0, run - from));
        continue;
      }
      const bits = new Uint32Array(src.buffer, src.byteOffset, run - from);
      const out = new Uint16Array(data.buffer, (b * run + from) * 2, run - from);
      for (let i = 0; i < out.length; i++) out[i] = halfBitsFast(bits[i]);
    }
    return { codec, shape, length, data };
  }
  const scales = new Float32Array(data.buffer, 0, nBlocks * length);
  const q = new Int8Array(data.buffer, nBlocks * length * 4);
  const baseScales = usable > 0 ? new Float32Array(base!.kv.data.buffer, base!.kv.data.byteOffset, nBlocks * base!.kv.length) : undefined;
  const baseQ = usable > 0 ? new Int8Array(base!.kv.data.buffer, base!.kv.data.byteOffset + nBlocks * base!.kv.length * 4, nBlocks * stride) : undefined;
  for (let b = 0; b < nBlocks; b++) {
    if (baseScales && baseQ) {
      scales.set(baseScales.subarray(b * base!.kv.length, b * base!.kv.length + usable), b * length);
      q.set(baseQ.subarray(b * stride, b * stride + from), b * run);
    }
    if (usable === length) continue;
    const src = srcOf(b);
    for (let p = usable; p < length; p++) {
      const row = (p - usable) * headDim;
      let max = 0;
      for (let i = 0; i < headDim; i++) {
        const a = Math.abs(src[row + i]);
        if (a > max) max = a;
      }
      const scale = max / 127;
      scales[b * length + p] = scale;
      const inv = scale > 0 ? 1 / scale : 0;
      const at = b * run + p * headDim;
      for (let i = 0; i < headDim; i++) q[at + i] = Math.round(src[row + i] * inv);
    }
  }
  return { codec, shape, length, data };
}

function sameShape(a: KvShape, b: KvShape): boolean {
  return a.layers === b.layers && a.heads === b.heads && a.headDim === b.headDim;
}

/** Writes positions [0, length) of `kv` into `into` at positions [at, at + length) (length <= kv.length). */
export function decodeKvInto(kv: EncodedKv, into: KvWriter, length: number = kv.length, at = 0): void {
  if (!sameShape(kv.shape, into.shape)) {
    throw new RangeError(`kept cache shape ${JSON.stringify(kv.shape)} does not match the live cache's ${JSON.stringify(into.shape)}`);
  }
  if (length > kv.length) throw new RangeError(`the kept cache holds ${kv.length} positions; ${length} were asked for`);
  if (length === 0) return;
  const { heads, headDim } = kv.shape;
  const stride = kv.length * headDim;
  const run = length * headDim;
  const nBlocks = blocks(kv.shape);
  if (kv.codec === 'fp32') {
    const all = new Float32Array(kv.data.buffer, kv.data.byteOffset, nBlocks * stride);
    for (let b = 0; b < nBlocks; b++) into.write(Math.floor(b / heads), b % heads, at, all.subarray(b * stride, b * stride + run));
    return;
  }
  const scratch = new Float32Array(run);
  if (kv.codec === 'fp16') {
    const table = halfToFloatTable();
    const src = new Uint16Array(kv.data.buffer, kv.data.byteOffset, nBlocks * stride);
    for (let b = 0; b < nBlocks; b++) {
      const base = b * stride;
      for (let i = 0; i < run; i++) scratch[i] = table[src[base + i]];
      into.write(Math.floor(b / heads), b % heads, at, scratch);
    }
    return;
  }
  const scales = new Float32Array(kv.data.buffer, kv.data.byteOffset, nBlocks * kv.length);
  const q = new Int8Array(kv.data.buffer, kv.data.byteOffset + nBlocks * kv.length * 4, nBlocks * stride);
  for (let b = 0; b < nBlocks; b++) {
    for (let p = 0; p < length; p++) {
      const scale = scales[b * kv.length + p];
      const base = b * stride + p * headDim;
      const row = p * headDim;
      for (let i = 0; i < headDim; i++) scratch[row + i] = q[base + i] * scale;
    }
    into.write(Math.floor(b / heads), b % heads, at, scratch);
  }
}

/** Positions [from, to) of `reader`, seen as positions [0, to - from). */
export function shiftedReader(reader: KvReader, from: number, to: number): KvReader {
  return { shape: reader.shape, length: to - from, read: (j, h, a, b) => reader.read(j, h, from + a, from + b) };
}

/**
 * An entry stored as consecutive pieces (positions [0, n1), [n1, n2), ...), as the body of one
 * EncodedKv of their total length would be laid out: the byte ranges, in order, without copying.
 */
export interface KvBody {
  readonly codec: KvCodecName;
  readonly shape: KvShape;
  readonly length: number;
  readonly byteLength: number;
  readonly parts: readonly Uint8Array[];
}

export function bodyOf(pieces: readonly EncodedKv[]): KvBody {
  if (pieces.length === 0) throw new RangeError('an entry has at least one piece');
  const { codec, shape } = pieces[0];
  if (pieces.some((p) => p.codec !== codec || !sameShape(p.shape, shape))) throw new RangeError('the pieces of one entry share a codec and a shape');
  const nBlocks = blocks(shape);
  const d = shape.headDim;
  const parts: Uint8Array[] = [];
  const slice = (p: EncodedKv, from: number, bytes: number) => p.data.subarray(from, from + bytes);
  if (codec === 'int8') {
    for (let b = 0; b < nBlocks; b++) for (const p of pieces) parts.push(slice(p, b * p.length * 4, p.length * 4));
    for (let b = 0; b < nBlocks; b++) for (const p of pieces) parts.push(slice(p, nBlocks * p.length * 4 + b * p.length * d, p.length * d));
  } else {
    const w = codec === 'fp32' ? 4 : 2;
    for (let b = 0; b < nBlocks; b++) for (const p of pieces) parts.push(slice(p, b * p.length * d * w, p.length * d * w));
  }
  const length = pieces.reduce((n, p) => n + p.length, 0);
  return { codec, shape, length, byteLength: encodedBytes(shape, length, codec), parts };
}

/** The pieces joined into one EncodedKv (one copy). */
export function joinPieces(pieces: readonly EncodedKv[]): EncodedKv {
  if (pieces.length === 1) return pieces[0];
  const body = bodyOf(pieces);
  const data = new Uint8Array(body.byteLength);
  let at = 0;
  for (const part of body.parts) {
    data.set(part, at);
    at += part.length;
  }
  return { codec: body.codec, shape: body.shape, length: body.length, data };
}
