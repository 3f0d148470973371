import { describe, expect, it } from 'vitest';
import { encodedBytes } from '../../src/serving/kv-codec.ts';
import type { KvShape, KvWriter, PositionKey } from '../../src/serving/kv-types.ts';
import { createKvStore } from '../../src/serving/prefix-store.ts';
import { ArrayKv, SHAPE, tokens } from './kv-fakes.ts';

/** Bytes one entry of n positions takes in the store's accounting (data + keys + bookkeeping). */
function entryBytes(n: number, codec: 'fp32' | 'fp16' | 'int8' = 'fp32'): number {
  return encodedBytes(SHAPE, n, codec) + n * 8 + 256;
}

async function reuse(store: ReturnType<typeof createKvStore>, keys: PositionKey[], shape: KvShape = SHAPE): Promise<{ length: number; live: ArrayKv } | undefined> {
  const match = await store.match(keys, keys.length - 1);
  if (!match) return undefined;
  const live = new ArrayKv(shape, keys.length);
  await match.copyInto(live);
  return { length: match.length, live };
}

describe('prefix store: matching', () => {
  it('reuses the longest true common prefix and copies exactly those positions (fp32 exact)', async () => {
    const store = createKvStore({ budgetBytes: 1 << 20, codec: 'fp32' });
    const turn1 = tokens(20);
    await store.insert(turn1, ArrayKv.forKeys(turn1));
    const turn2 = [...turn1, ...tokens(5, 1)];
    const got = await reuse(store, turn2);
    expect(got?.length).toBe(20);
    expect(got!.live.maxDiff(ArrayKv.forKeys(turn2), 20)).toBe(0);
    expect(store.stats().reusedPositions).toBe(20);
  });

  it('stops at the first differing position (re-tokenized history)', async () => {
    const store = createKvStore({ budgetBytes: 1 << 20, codec: 'fp32' });
    const a = tokens(20);
    await store.insert(a, ArrayKv.forKeys(a));
    const b = [...a];
    b[7] = 99;
    const got = await reuse(store, b);
    expect(got?.length).toBe(7);
    expect(got!.live.maxDiff(ArrayKv.forKeys(b), 7)).toBe(0);
  });

  it('an image with another hash is not the same prefix', async () => {
    const store = createKvStore({ budgetBytes: 1 << 20 });
    const img = (hash: string) => [0, 1, 2, 3].map((k) => `img:${hash}:${k}`);
    const a = [2, 10, 11, ...img('aa'), 12, 13];
    await store.insert(a, ArrayKv.forKeys(a));
    expect((await reuse(store, [2, 10, 11, ...img('bb'), 12, 13, 14]))?.length).toBe(3);
    expect((await reuse(store, [2, 10, 11, ...img('aa'), 12, 13, 14]))?.length).toBe(9);
  });

  it('a trimmed history (first turn dropped) shifts every position: only the shared </s> is reused', async () => {
    const store = createKvStore({ budgetBytes: 1 << 20 });
    const t1 = tokens(6, 1);
    const t2 = tokens(6, 2);
    const t3 = tokens(6, 3);
    const full = [2, ...t1, ...t2, ...t3];
    await store.insert(full, ArrayKv.forKeys(full));
    expect((await store.match([2, ...t2, ...t3, ...tokens(4, 4)], 100))?.length).toBe(1);
    expect(await store.match([...t2, ...t3], 100)).toBeUndefined();
  });

  it('respects maxLength (at least one position left to decode)', async () => {
    const store = createKvStore({ budgetBytes: 1 << 20 });
    const a = tokens(10);
    await store.insert(a, ArrayKv.forKeys(a));
    expect((await store.match(a, a.length - 1))?.length).toBe(9);
    expect((await store.match(a, 3))?.length).toBe(3);
    expect(await store.match(a, 0)).toBeUndefined();
    expect((await store.match(a.slice(0, 4), 100))?.length).toBe(4);
  });

  it('uses a common prefix of a longer entry, and the longest of several', async () => {
    const store = createKvStore({ budgetBytes: 1 << 20, codec: 'fp32' });
    const a = [...tokens(5), ...tokens(10, 1)];
    const b = [...tokens(5), ...tokens(3, 2)];
    await store.insert(a, ArrayKv.forKeys(a));
    await store.insert(b, ArrayKv.forKeys(b));
    const q = [...tokens(5), ...tokens(6, 1), 77];
    const got = await reuse(store, q);
    expect(got?.length).toBe(11);
    expect(got!.live.maxDiff(ArrayKv.forKeys(q), 11)).toBe(0);
  });

  it('keeping the next turn reuses the encoded positions of the kept turn', async () => {
    const store = createKvStore({ budgetBytes: 1 << 20, codec: 'fp32' });
    const turn1 = tokens(10);
    await store.insert(turn1, ArrayKv.forKeys(turn1));
    const turn2 = [...turn1, ...tokens(4, 1)];
    const live = ArrayKv.forKeys(turn2);
    live.read(0, 0, 0, 10).fill(7); // not read again: the kept entry has them
    await store.insert(turn2, live);
    const got = await reuse(store, [...turn2, 1]);
    expect(got?.length).toBe(14);
    expect(got!.live.maxDiff(ArrayKv.forKeys(turn2), 14)).toBe(0);
  });

  it('a diverging next turn shares the common pieces: memory counts them once', async () => {
    const store = createKvStore({ budgetBytes: 1 << 20, codec: 'fp32' });
    const t1 = tokens(10);
    const t2 = [...t1, ...tokens(10, 1)];
    await store.insert(t1, ArrayKv.forKeys(t1));
    await store.insert(t2, ArrayKv.forKeys(t2));
    const enc = (n: number) => encodedBytes(SHAPE, n, 'fp32');
    expect(store.stats()).toMatchObject({ entries: 1, bytes: enc(10) + enc(10) + 20 * 8 + 256 });
    // Re-tokenized history: t3 agrees with t2 up to position 15 only; t2 stays kept beside it.
    const t3 = [...t2.slice(0, 15), ...tokens(10, 2)];
    const live = ArrayKv.forKeys(t3);
    for (let j = 0; j < 4; j++) for (let h = 0; h < 2; h++) live.read(j, h, 0, 15).fill(NaN); // never read: shared or copied
    await store.insert(t3, live);
    expect(store.stats()).toMatchObject({ entries: 2, bytes: enc(10) + enc(10) + enc(15) + 20 * 8 + 256 + 25 * 8 + 256 });
    for (const keys of [t2, t3]) {
      const got = await reuse(store, [...keys, 1]);
      expect(got?.length).toBe(keys.length);
      expect(got!.live.maxDiff(ArrayKv.forKeys(keys), keys.length)).toBe(0);
    }
    // Evicting t2 frees only what t3 does not hold.
    const big = tokens(200, 3);
    await store.insert(big, ArrayKv.forKeys(big));
    expect(store.stats().bytes).toBeLessThanOrEqual(1 << 20);
  });

  it('a long dialogue keeps working across many turns (pieces joined past a bound)', async () => {
    for (const codec of ['fp32', 'int8'] as const) {
      const store = createKvStore({ budgetBytes: 8 << 20, codec });
      let keys: number[] = [2];
      for (let turn = 0; turn < 40; turn++) {
        keys = [...keys, ...tokens(3, turn + 1)];
        await store.insert(keys, ArrayKv.forKeys(keys));
        expect(store.stats().entries).toBe(1);
      }
      const got = await reuse(store, [...keys, 1]);
      expect(got?.length).toBe(keys.length);
      expect(got!.live.maxDiff(ArrayKv.forKeys(keys), keys.length)).toBeLessThan(codec === 'fp32' ? 1e-12 : 0.05);
      expect(store.stats().bytes).toBe(encodedBytes(SHAPE, keys.length, codec) + keys.length * 8 + 256);
    }
  });

  it('fp16 storage copies within half precision', async () => {
    const store = createKvStore({ budgetBytes: 1 << 20, codec: 'fp16' });
    const a = tokens(12);
    await store.insert(a, ArrayKv.forKeys(a));
    const got = await reuse(store, [...a, 5]);
    expect(got!.live.maxDiff(ArrayKv.forKeys(a), 12)).toBeLessThan(8 * 2 ** -11);
  });

  it('counts prefilled positions for the metrics', () => {
    const store = createKvStore({ budgetBytes: 1 << 20 });
    store.notePrefilled(12);
    store.notePrefilled(0);
    expect(store.stats().prefilledPositions).toBe(12);
  });
});

describe('prefix store: budget', () => {
  it('budget 0 turns reuse off', async () => {
    const store = createKvStore({ budgetBytes: 0 });
    const a = tokens(10);
    await store.insert(a, ArrayKv.forKeys(a));
    expect(await store.match(a, 9)).toBeUndefined();
    expect(store.stats()).toMatchObject({ entries: 0, bytes: 0, budgetBytes: 0 });
  });

  it('evicts the least recently used entry; a match counts as use', async () => {
    const store = createKvStore({ budgetBytes: 2 * entryBytes(10), codec: 'fp32' });
    const [a, b, c] = [tokens(10, 1), tokens(10, 2), tokens(10, 3)];
    await store.insert(a, ArrayKv.forKeys(a));
    await store.insert(b, ArrayKv.forKeys(b));
    await store.match(a, 9); // a is now more recent than b
    await store.insert(c, ArrayKv.forKeys(c));
    expect(store.stats()).toMatchObject({ entries: 2, evictions: 1 });
    expect(store.stats().bytes).toBeLessThanOrEqual(2 * entryBytes(10));
    expect(await store.match(b, 9)).toBeUndefined();
    expect((await store.match(a, 9))?.length).toBe(9);
    expect((await store.match(c, 9))?.length).toBe(9);
  });

  it('headroom: kept caches leave that part of the budget free for the allocators', async () => {
    // Two entries fit the budget exactly; with 3% left free only one does.
    const store = createKvStore({ budgetBytes: 2 * entryBytes(10), codec: 'fp32', headroomBytes: Math.ceil(0.03 * 2 * entryBytes(10)) });
    const [a, b] = [tokens(10, 1), tokens(10, 2)];
    await store.insert(a, ArrayKv.forKeys(a));
    await store.insert(b, ArrayKv.forKeys(b));
    expect(store.stats()).toMatchObject({ entries: 1, evictions: 1 });
    expect(store.stats().bytes).toBeLessThanOrEqual(0.97 * 2 * entryBytes(10));
    expect((await store.match(b, 9))?.length).toBe(9);
  });

  it('makes room before encoding a new entry: kept bytes plus the one being encoded stay within what live caches leave', async () => {
    const budget = 3 * entryBytes(10);
    const store = createKvStore({ budgetBytes: budget, codec: 'fp32' });
    const live = entryBytes(10); // the finished row the cache is copied from is still live
    store.memory?.growLive(live);
    let worst = 0;
    // What encoding allocates: the data (bookkeeping is counted when the entry is kept).
    const watched = (keys: PositionKey[], newBytes = encodedBytes(SHAPE, keys.length, 'fp32')): ArrayKv => {
      const kv = ArrayKv.forKeys(keys);
      const read = kv.read.bind(kv);
      // Reads happen while the new entry is being encoded: its bytes exist but are not counted yet.
      kv.read = (j, h, from, to) => {
        worst = Math.max(worst, store.stats().bytes + newBytes + live);
        return read(j, h, from, to);
      };
      return kv;
    };
    for (let i = 1; i <= 4; i++) {
      const keys = tokens(10, i);
      await store.insert(keys, watched(keys));
    }
    // A dialogue's next turn encodes only its tail, beside the turn it extends.
    const turn1 = tokens(10, 9);
    await store.insert(turn1, watched(turn1));
    const turn2 = [...turn1, ...tokens(10, 10)];
    await store.insert(turn2, watched(turn2, encodedBytes(SHAPE, 10, 'fp32')));
    expect(store.stats().evictions).toBeGreaterThan(0);
    expect(worst).toBeLessThanOrEqual(budget);
    expect((await store.match([...turn2, 1], 100))?.length).toBe(20);
  });

  it('an entry larger than the whole budget is not kept, and nothing breaks', async () => {
    const store = createKvStore({ budgetBytes: entryBytes(10), codec: 'fp32' });
    const small = tokens(10, 1);
    await store.insert(small, ArrayKv.forKeys(small));
    const big = tokens(50, 2);
    await store.insert(big, ArrayKv.forKeys(big));
    expect(store.stats()).toMatchObject({ entries: 1, evictions: 0 });
    expect(await store.match(big, 49)).toBeUndefined();
    expect((await store.match(small, 9))?.length).toBe(9);
  });

  it('an entry extended by a newer one is replaced; a prefix of a kept one adds nothing', async () => {
    const store = createKvStore({ budgetBytes: 1 << 20 });
    const turn1 = tokens(10);
    const turn2 = [...turn1, ...tokens(8, 1)];
    await store.insert(turn1, ArrayKv.forKeys(turn1));
    await store.insert(turn2, ArrayKv.forKeys(turn2));
    expect(store.stats().entries).toBe(1);
    await store.insert(turn1, ArrayKv.forKeys(turn1));
    expect(store.stats().entries).toBe(1);
    expect((await store.match([...turn2, 1], 100))?.length).toBe(18);
  });

  it('never evicts an entry while it is being copied out', async () => {
    const store = createKvStore({ budgetBytes: 2 * entryBytes(10), codec: 'fp32' });
    const [a, b, c] = [tokens(10, 1), tokens(10, 2), tokens(10, 3)];
    await store.insert(a, ArrayKv.forKeys(a));
    await store.insert(b, ArrayKv.forKeys(b));
    const match = await store.match([...a, 1], 10);
    expect(match?.length).toBe(10);
    const live = new ArrayKv(SHAPE, 11);
    let inserted: Promise<void> | undefined;
    // Another row finishes mid-copy and its cache is kept while a, the least recently used, is being copied.
    const writer: KvWriter = {
      shape: SHAPE,
      write: (j, h, at, values) => {
        if (!inserted) inserted = store.insert(c, ArrayKv.forKeys(c));
        live.write(j, h, at, values);
      },
    };
    await store.match(b, 9); // b more recent than a: a would be the victim
    await match!.copyInto(writer);
    await inserted;
    expect(live.maxDiff(ArrayKv.forKeys(a), 10)).toBe(0);
    // a was pinned, so b went instead; c was kept.
    expect(await store.match(b, 9)).toBeUndefined();
    expect((await store.match(a, 9))?.length).toBe(9);
    expect((await store.match(c, 9))?.length).toBe(9);
    expect(store.stats().bytes).toBeLessThanOrEqual(2 * entryBytes(10));
  });

  it('when everything else is being copied, the new entry is the one not kept', async () => {
    const store = createKvStore({ budgetBytes: entryBytes(10), codec: 'fp32' });
    const [a, c] = [tokens(10, 1), tokens(10, 3)];
    await store.insert(a, ArrayKv.forKeys(a));
    const match = await store.match(a, 10);
    let inserted: Promise<void> | undefined;
    const live = new ArrayKv(SHAPE, 10);
    await match!.copyInto({
      shape: SHAPE,
      write: (j, h, at, values) => {
        inserted ??= store.insert(c, ArrayKv.forKeys(c));
        live.write(j, h, at, values);
      },
    });
    await inserted;
    expect((await store.match(a, 9))?.length).toBe(9);
    expect(await store.match(c, 9)).toBeUndefined();
  });

  it('a match stays valid after its entry is evicted', async () => {
    const store = createKvStore({ budgetBytes: entryBytes(10), codec: 'fp32' });
    const [a, b] = [tokens(10, 1), tokens(10, 2)];
    await store.insert(a, ArrayKv.forKeys(a));
    const match = await store.match(a, 10);
    await store.insert(b, ArrayKv.forKeys(b));
    expect(store.stats().evictions).toBe(1);
    const live = new ArrayKv(SHAPE, 10);
    await match!.copyInto(live);
    expect(live.maxDiff(ArrayKv.forKeys(a), 10)).toBe(0);
  });

  it('after close nothing is matched or kept', async () => {
    const store = createKvStore({ budgetBytes: 1 << 20 });
    const a = tokens(10);
    await store.insert(a, ArrayKv.forKeys(a));
    await store.close();
    expect(await store.match(a, 9)).toBeUndefined();
    await store.insert(a, ArrayKv.forKeys(a));
    expect(store.stats().entries).toBe(0);
  });
});
