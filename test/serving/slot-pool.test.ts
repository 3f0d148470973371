import { describe, expect, it } from 'vitest';
import { KvCache } from '../../src/model/kv-cache.ts';
import { SlotPool } from '../../src/serving/slot-pool.ts';

const shape = { layers: 2, heads: 3, headDim: 2, maxPositions: 200 };
const T = shape.layers * 2;

/** A value that names its sequence, tensor, head, position and dim. */
const val = (seq: number, t: number, h: number, p: number, d: number): number => seq * 100_000 + t * 10_000 + h * 1000 + p * 10 + d;

/** A single-sequence cache of `len` positions of sequence `seq`. */
function cacheOf(seq: number, len: number): KvCache {
  const c = new KvCache(shape);
  c.append(step(seq, 0, len), len);
  return c;
}

/** new_key_values of one sequence for positions [from, from + n): [1, heads, n, headDim] per tensor. */
function step(seq: number, from: number, n: number): Float32Array[] {
  return Array.from({ length: T }, (_, t) => {
    const a = new Float32Array(shape.heads * n * shape.headDim);
    for (let h = 0; h < shape.heads; h++) for (let s = 0; s < n; s++) for (let d = 0; d < shape.headDim; d++) a[(h * n + s) * shape.headDim + d] = val(seq, t, h, from + s, d);
    return a;
  });
}

/** One batched step's new_key_values for rows holding sequences `seqs` at lengths `lens`. */
function batchStep(seqs: number[], lens: number[]): Float32Array[] {
  return Array.from({ length: T }, (_, t) => {
    const a = new Float32Array(seqs.length * shape.heads * shape.headDim);
    seqs.forEach((seq, r) => {
      for (let h = 0; h < shape.heads; h++) for (let d = 0; d < shape.headDim; d++) a[(r * shape.heads + h) * shape.headDim + d] = val(seq, t, h, lens[r], d);
    });
    return a;
  });
}

/** Every filled slot of every row, read through the fed tensors, holds its sequence's values. */
function expectRows(pool: SlotPool, seqs: number[]): void {
  const feeds = pool.feeds();
  expect(pool.rows).toBe(seqs.length);
  for (let t = 0; t < T; t++) {
    const tensor = feeds[`past_key_values.${t >> 1}.${t % 2 === 0 ? 'key' : 'value'}`];
    expect(tensor.dims).toEqual([seqs.length, shape.heads, pool.capacity, shape.headDim]);
    const data = tensor.data as Float32Array;
    seqs.forEach((seq, r) => {
      for (let h = 0; h < shape.heads; h++) {
        for (let p = 0; p < pool.rowLength(r); p++) {
          for (let d = 0; d < shape.headDim; d++) expect(data[((r * shape.heads + h) * pool.capacity + p) * shape.headDim + d]).toBe(val(seq, t, h, p, d));
        }
      }
      const reader = pool.reader(r);
      expect(reader.length).toBe(pool.rowLength(r));
      expect(reader.read(t, 1, 2, 3)[0]).toBe(val(seq, t, 1, 2, 0));
    });
  }
}

describe('SlotPool', () => {
  it('joins prefilled caches as rows and feeds each row its own mask and position', () => {
    const pool = new SlotPool(shape, 4);
    expect(pool.join(cacheOf(1, 5), 10)).toBe(0);
    expect(pool.join(cacheOf(2, 40), 10)).toBe(1);
    // What the rows may reach: 40 + 10.
    expect(pool.capacity).toBe(50);
    expectRows(pool, [1, 2]);
    const mask = Array.from(pool.attentionMask().data as BigInt64Array);
    const w = 50 + 1;
    expect(mask.length).toBe(2 * w);
    expect(mask.slice(0, w).filter((v) => v === 1n).length).toBe(6);
    expect(mask.slice(0, 5).every((v) => v === 1n) && mask[w - 1] === 1n && mask[5] === 0n).toBe(true);
    expect(mask.slice(w, w + 40).every((v) => v === 1n) && mask[w + 40] === 0n && mask[2 * w - 1] === 1n).toBe(true);
    expect(Array.from(pool.positionIds().data as BigInt64Array)).toEqual([5n, 40n]);
  });

  it('appends one position per row per step in place (no copy of the buffers)', () => {
    const pool = new SlotPool(shape, 4);
    pool.join(cacheOf(1, 5), 10);
    pool.join(cacheOf(2, 9), 10);
    const before = pool.feeds()['past_key_values.0.key'].data as Float32Array;
    pool.append(batchStep([1, 2], [5, 9]));
    pool.append(batchStep([1, 2], [6, 10]));
    expect(pool.rowLength(0)).toBe(7);
    expect(pool.rowLength(1)).toBe(11);
    const after = pool.feeds()['past_key_values.0.key'].data as Float32Array;
    expect(after.buffer).toBe(before.buffer);
    expectRows(pool, [1, 2]);
  });

  it('a leaving row is replaced by the last one, so the active rows stay a prefix', () => {
    const pool = new SlotPool(shape, 4);
    pool.join(cacheOf(1, 5), 10);
    pool.join(cacheOf(2, 9), 10);
    pool.join(cacheOf(3, 30), 10);
    expect(pool.leave(0)).toBe(2);
    expectRows(pool, [3, 2]);
    expect(pool.leave(1)).toBeUndefined();
    expectRows(pool, [3]);
    pool.append(batchStep([3], [30]));
    expectRows(pool, [3]);
    expect(pool.join(cacheOf(4, 3), 10)).toBe(1);
    expectRows(pool, [3, 4]);
  });

  it('fits the shared capacity to what the rows need: grows for a long joiner, shrinks when it leaves, releases memory when empty', () => {
    const pool = new SlotPool(shape, 3);
    pool.join(cacheOf(1, 5), 10);
    expect(pool.capacity).toBe(15);
    pool.append(batchStep([1], [5]));
    pool.join(cacheOf(2, 100), 20);
    expect(pool.capacity).toBe(120);
    expectRows(pool, [1, 2]);
    pool.join(cacheOf(3, 150), 30);
    expect(pool.capacity).toBe(180);
    expect(pool.allocatedRows).toBe(3);
    expectRows(pool, [1, 2, 3]);
    // Rows 1 and 2 still need 120 of 180: no copy.
    pool.leave(2);
    expect(pool.capacity).toBe(180);
    // Row 1 needs 15 of 180: shrink to it, contents kept.
    pool.leave(1);
    expect(pool.capacity).toBe(15);
    expectRows(pool, [1]);
    pool.append(batchStep([1], [6]));
    expectRows(pool, [1]);
    pool.leave(0);
    expect(pool.rows).toBe(0);
    expect(pool.capacity).toBe(0);
    expect(pool.allocatedRows).toBe(0);
  });

  it('refuses a row beyond maxRows, past max_positions, or a full row', () => {
    const pool = new SlotPool(shape, 1);
    expect(() => pool.join(cacheOf(1, 150), 51)).toThrow(/at most 200 positions; 201 were asked for/);
    pool.join(cacheOf(1, 64), 0);
    expect(() => pool.join(cacheOf(2, 3), 1)).toThrow(/all 1 rows are in use/);
    expect(() => pool.append(batchStep([1], [64]))).toThrow(/row 0 is full/);
    expect(() => pool.reader(1)).toThrow(/row 1 is not active/);
  });

  it('writes into a row through its KvWriter view', () => {
    const pool = new SlotPool(shape, 2);
    pool.join(cacheOf(1, 4), 4);
    pool.writer(0).write(1, 2, 1, Float32Array.of(-1, -2));
    expect(Array.from(pool.reader(0).read(1, 2, 1, 2))).toEqual([-1, -2]);
    expect(() => pool.writer(0).write(0, 0, 7, new Float32Array(4))).toThrow(/into a row with room for 8/);
  });

  it('snapshots a row into a copy that outlives the pool changing', () => {
    const pool = new SlotPool(shape, 2);
    pool.join(cacheOf(1, 5), 10);
    pool.join(cacheOf(2, 7), 40);
    const snap = pool.snapshot(0);
    pool.leave(0);
    pool.leave(0);
    pool.join(cacheOf(3, 30), 10);
    expect(snap.length).toBe(5);
    for (let t = 0; t < T; t++) for (let h = 0; h < shape.heads; h++) expect(Array.from(snap.read(t, h, 4, 5))).toEqual([val(1, t, h, 4, 0), val(1, t, h, 4, 1)]);
    expect(() => snap.read(0, 0, 0, 6)).toThrow(/snapshot holding 5/);
  });

  it('under a memory budget: reports every buffer allocated and dropped (at most one layer twice while resizing), rows tight, contents kept', () => {
    let live = 0;
    let peak = 0;
    const memory = { grow: (n: number) => ((live += n), (peak = Math.max(peak, live))), shrink: (n: number) => (live -= n) };
    const pool = new SlotPool(shape, 4, { memory, tightRows: true });
    const layerBytes = (rows: number, cap: number): number => rows * shape.heads * cap * shape.headDim * 4;
    pool.join(cacheOf(1, 10), 5);
    pool.join(cacheOf(2, 60), 5);
    pool.join(cacheOf(3, 12), 5);
    // Exactly the rows held (no doubling to 4), each buffer counted once.
    expect(pool.allocatedRows).toBe(3);
    expect(live).toBe(pool.allocatedBytes);
    expect(live).toBe(T * layerBytes(3, 65));
    // Growing from 2 rows to 3: the old buffers, less one layer, plus the new ones never coexist whole.
    expect(peak).toBeLessThanOrEqual(T * layerBytes(3, 65) + layerBytes(3, 65));
    expectRows(pool, [1, 2, 3]);
    // The longest row leaves: the rest need at most half the capacity, so rows and capacity shrink.
    pool.leave(1);
    expect(pool.allocatedRows).toBe(2);
    expect(pool.capacity).toBe(17);
    expect(live).toBe(pool.allocatedBytes);
    expectRows(pool, [1, 3]);
    pool.leave(0);
    pool.leave(0);
    expect(pool.allocatedBytes).toBe(0);
    expect(live).toBe(0);
  });
});
