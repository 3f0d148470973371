import { describe, expect, it } from 'vitest';
import { KvCache, MIN_CACHE_CAPACITY } from '../../src/model/kv-cache.ts';

const shape = { layers: 2, heads: 3, headDim: 2, maxPositions: 200 };

/** new_key_values for `seq` positions starting at `from`: value = tensor*1000 + head*100 + position*10 + dim. */
function fresh(from: number, seq: number): Float32Array[] {
  return Array.from({ length: shape.layers * 2 }, (_, t) => {
    const a = new Float32Array(shape.heads * seq * shape.headDim);
    for (let h = 0; h < shape.heads; h++) for (let s = 0; s < seq; s++) for (let d = 0; d < shape.headDim; d++) a[(h * seq + s) * shape.headDim + d] = t * 1000 + h * 100 + (from + s) * 10 + d;
    return a;
  });
}

/** Checks every filled slot of every fed buffer holds what `fresh` wrote for that position. */
function expectContents(cache: KvCache): void {
  const feeds = cache.feeds();
  for (let t = 0; t < shape.layers * 2; t++) {
    const tensor = feeds[`past_key_values.${t >> 1}.${t % 2 === 0 ? 'key' : 'value'}`];
    expect(tensor.dims).toEqual([1, shape.heads, cache.capacity, shape.headDim]);
    const data = tensor.data as Float32Array;
    for (let h = 0; h < shape.heads; h++) {
      for (let p = 0; p < cache.length; p++) {
        for (let d = 0; d < shape.headDim; d++) expect(data[(h * cache.capacity + p) * shape.headDim + d]).toBe(t * 1000 + h * 100 + p * 10 + d);
      }
    }
  }
}

describe('KvCache', () => {
  it('feeds an empty cache with capacity 0 and a mask of the new positions only', () => {
    const c = new KvCache(shape);
    expect(c.feeds()['past_key_values.0.key'].dims).toEqual([1, 3, 0, 2]);
    c.reserve(5);
    expect(c.capacity).toBe(MIN_CACHE_CAPACITY);
    expect(c.feeds()['past_key_values.1.value'].dims).toEqual([1, 3, 0, 2]);
    expect(Array.from(c.attentionMask(5).data as BigInt64Array)).toEqual([1n, 1n, 1n, 1n, 1n]);
  });

  it('appends head by head into the next slots and masks the empty ones', () => {
    const c = new KvCache(shape);
    c.append(fresh(0, 5), 5);
    c.append(fresh(5, 1), 1);
    expect(c.length).toBe(6);
    expectContents(c);
    const mask = c.attentionMask(2);
    expect(mask.dims).toEqual([1, MIN_CACHE_CAPACITY + 2]);
    const m = Array.from(mask.data as BigInt64Array);
    expect(m.slice(0, 6).every((v) => v === 1n)).toBe(true);
    expect(m.slice(6, MIN_CACHE_CAPACITY).every((v) => v === 0n)).toBe(true);
    expect(m.slice(MIN_CACHE_CAPACITY)).toEqual([1n, 1n]);
  });

  it('release drops the buffers (a holder of the object keeps no memory) and leaves an empty cache that works again', () => {
    const c = new KvCache(shape);
    c.preallocate(10);
    c.append(fresh(0, 10), 10);
    const before = c.feeds()['past_key_values.0.key'].data;
    c.release();
    expect([c.length, c.capacity]).toEqual([0, 0]);
    expect(c.feeds()['past_key_values.0.key'].data).not.toBe(before);
    expect((c.feeds()['past_key_values.0.key'].data as Float32Array).length).toBe(0);
    c.append(fresh(0, 4), 4);
    expectContents(c);
  });

  it('feeds the same buffers every step until it grows (no copy per step)', () => {
    const c = new KvCache(shape);
    c.append(fresh(0, 3), 3);
    const before = c.feeds()['past_key_values.0.key'].data;
    c.append(fresh(3, 1), 1);
    expect(c.feeds()['past_key_values.0.key'].data).toBe(before);
  });

  it('doubles its capacity when full, keeps the contents, and stops at max_positions', () => {
    const c = new KvCache(shape);
    c.append(fresh(0, 70), 70);
    expect(c.capacity).toBe(128);
    expectContents(c);
    for (let p = 70; p < 130; p++) c.append(fresh(p, 1), 1);
    expect(c.capacity).toBe(200);
    expect(c.length).toBe(130);
    expectContents(c);
    expect(c.capacityFor(70)).toBe(200);
    expect(() => c.reserve(71)).toThrow(/at most 200 positions; 130 are filled and 71 more/);
  });

  it('sizes the first allocation for a long prompt (rounded up by doubling)', () => {
    const c = new KvCache(shape);
    expect(c.capacityFor(100)).toBe(128);
    expect(c.capacityFor(150)).toBe(200);
  });

  it('refuses new keys/values of the wrong count or size', () => {
    const c = new KvCache(shape);
    expect(() => c.append(fresh(0, 2).slice(1), 2)).toThrow(/expected 4 new key\/value tensors, got 3/);
    expect(() => c.append(fresh(0, 2), 3)).toThrow(/has 12 values, expected 18/);
  });

  it('reads positions through its KvReader view and restores a kept prefix through its KvWriter view', async () => {
    const src = new KvCache(shape);
    src.append(fresh(0, 9), 9);
    expect(Array.from(src.read(3, 2, 4, 5))).toEqual([3 * 1000 + 200 + 40, 3 * 1000 + 200 + 41]);
    expect(() => src.read(0, 0, 5, 10)).toThrow(/positions \[5, 10\) of a cache holding 9/);
    const c = new KvCache(shape);
    await c.restorePrefix(6, async (into) => {
      for (let j = 0; j < shape.layers * 2; j++) for (let h = 0; h < shape.heads; h++) into.write(j, h, 0, src.read(j, h, 0, 6));
    });
    expect(c.length).toBe(6);
    c.append(fresh(6, 1), 1);
    expectContents(c);
    await expect(c.restorePrefix(2, async () => undefined)).rejects.toThrow(/only be restored into an empty cache/);
    const failed = new KvCache(shape);
    await expect(failed.restorePrefix(4, async () => Promise.reject(new Error('gone')))).rejects.toThrow('gone');
    // A copy that failed leaves the cache empty: the caller prefills everything.
    expect(failed.length).toBe(0);
    expect(() => failed.write(0, 0, failed.capacity, new Float32Array(2))).toThrow(/cannot write 1 positions/);
  });
});
