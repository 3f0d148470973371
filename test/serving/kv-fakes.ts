/** Synthetic live caches for the kept-cache tests: small shapes, values derived from the keys. */
import type { KvReader, KvShape, KvWriter, PositionKey } from '../../src/serving/kv-types.ts';

export const SHAPE: KvShape = { layers: 2, heads: 2, headDim: 4 };

/**
 * A value for every (tensor, head, position, lane) that depends on all keys up to that position,
 * as a real cache does: a copy from the wrong prefix shows up as different values.
 */
export function prefixHashes(keys: readonly PositionKey[]): number[] {
  let h = 2166136261;
  return keys.map((k) => {
    for (const c of String(k)) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
    h = Math.imul(h ^ 0xff, 16777619) >>> 0;
    return h;
  });
}

export function valueOf(hash: number, j: number, h: number, i: number): number {
  return Math.sin((hash % 100003) * 0.01 + j * 1.7 + h * 0.3 + i * 0.11) * (1 + (hash % 7));
}

/** A [heads, capacity, headDim] float32 buffer per tensor, as KvCache keeps them. */
export class ArrayKv implements KvReader, KvWriter {
  readonly buffers: Float32Array[];
  length: number;
  constructor(
    readonly shape: KvShape,
    readonly capacity: number,
  ) {
    this.buffers = Array.from({ length: 2 * shape.layers }, () => new Float32Array(shape.heads * capacity * shape.headDim));
    this.length = 0;
  }

  static forKeys(keys: readonly PositionKey[], shape: KvShape = SHAPE): ArrayKv {
    const kv = new ArrayKv(shape, keys.length);
    const hashes = prefixHashes(keys);
    for (let j = 0; j < 2 * shape.layers; j++)
      for (let h = 0; h < shape.heads; h++)
        for (let p = 0; p < keys.length; p++)
          for (let i = 0; i < shape.headDim; i++) kv.buffers[j][(h * kv.capacity + p) * shape.headDim + i] = valueOf(hashes[p], j, h, i);
    kv.length = keys.length;
    return kv;
  }

  read(j: number, h: number, from: number, to: number): Float32Array {
    const d = this.shape.headDim;
    return this.buffers[j].subarray((h * this.capacity + from) * d, (h * this.capacity + to) * d);
  }

  write(j: number, h: number, at: number, values: Float32Array): void {
    const d = this.shape.headDim;
    if (at + values.length / d > this.capacity) throw new RangeError('write past capacity');
    this.buffers[j].set(values, (h * this.capacity + at) * d);
    this.length = Math.max(this.length, at + values.length / d);
  }

  /** Largest |difference| with `other` over positions [0, n). */
  maxDiff(other: ArrayKv, n: number): number {
    let max = 0;
    for (let j = 0; j < this.buffers.length; j++)
      for (let h = 0; h < this.shape.heads; h++) {
        const a = this.read(j, h, 0, n);
        const b = other.read(j, h, 0, n);
        for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
      }
    return max;
  }
}

/** Token keys 0..n-1 offset by `seed`, for distinct sequences. */
export function tokens(n: number, seed = 0): number[] {
  return Array.from({ length: n }, (_, i) => 1000 + seed * 10_000 + i);
}
