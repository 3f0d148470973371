/**
 * One KV memory budget for live and kept caches (FROMAGE_KV_CACHE_MB > 0), on the fixture bundle:
 * live growth evicts kept entries, a job waits for memory (in arrival order) rather than going
 * over the budget, live + kept never exceed it, and answers stay those a job gets alone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CancelledError } from '../../src/model/errors.ts';
import { generateTokens, type GenerateSettings } from '../../src/model/generate.ts';
import { FromageGraphs } from '../../src/model/graphs.ts';
import type { AssembledPrompt } from '../../src/model/prompt.ts';
import { Batcher } from '../../src/serving/batcher.ts';
import { encodedBytes } from '../../src/serving/kv-codec.ts';
import { liveBound, positionBytes, type LiveJob } from '../../src/serving/kv-memory.ts';
import type { KvShape, PositionKey } from '../../src/serving/kv-types.ts';
import { createKvStore, type PrefixStore } from '../../src/serving/prefix-store.ts';
import { openFixtureBatch, type FixtureBatch } from './fixture-batch.ts';
import { ArrayKv, SHAPE, tokens } from './kv-fakes.ts';

let graphs: FromageGraphs;
let shape: KvShape;
let s: GenerateSettings;
let fixture: FixtureBatch;
beforeAll(async () => {
  fixture = await openFixtureBatch();
  ({ graphs, settings: s } = fixture);
  shape = graphs.emptyCache().shape;
});
afterAll(async () => {
  await fixture?.close();
});

const idsPrompt = (n: number, mul: number): Promise<AssembledPrompt> => fixture.idsPrompt(n, mul);
const keysOf = (p: AssembledPrompt, tag: string): PositionKey[] => Array.from({ length: p.length }, (_, i) => `${tag}${i}`);
const job = (prompt: number, numWords: number): LiveJob => ({ prompt, end: prompt + numWords, joined: false });
const empty = { allocatedRows: 0, capacity: 0 };
/** Bytes a kept fp32 entry of n positions takes (data + keys + bookkeeping). */
const entryBytes = (n: number, sh: KvShape = shape): number => encodedBytes(sh, n, 'fp32') + n * 8 + 256;

/** Checks live + kept after every live allocation and every token; returns the largest total seen. */
function watchBudget(store: PrefixStore, batcher: Batcher): { max: () => number; check: () => void } {
  let max = 0;
  const check = (): void => {
    const total = batcher.stats().liveBytes + store.stats().bytes;
    max = Math.max(max, total);
    expect(total).toBeLessThanOrEqual(store.stats().budgetBytes);
    // The batcher and the store count the same live bytes.
    expect(store.stats().liveBytes).toBe(batcher.stats().liveBytes);
  };
  const memory = store.memory as { growLive(n: number): void };
  const grow = memory.growLive.bind(memory);
  memory.growLive = (n) => {
    grow(n);
    check();
  };
  return { max: () => max, check };
}

describe('the KV memory budget holds live and kept caches (store unit)', () => {
  it('live bytes come first: counting them evicts kept entries least recently used first, and kept ones get what is left', async () => {
    const store = createKvStore({ budgetBytes: 3 * entryBytes(10, SHAPE), codec: 'fp32' });
    const [a, b, c] = [tokens(10, 1), tokens(10, 2), tokens(10, 3)];
    await store.insert(a, ArrayKv.forKeys(a));
    await store.insert(b, ArrayKv.forKeys(b));
    await store.insert(c, ArrayKv.forKeys(c));
    await store.match(a, 9); // b is now the least recently used
    store.memory!.growLive(entryBytes(10, SHAPE));
    expect(store.stats()).toMatchObject({ entries: 2, evictions: 1, liveBytes: entryBytes(10, SHAPE) });
    expect(await store.match(b, 9)).toBeUndefined();
    // A new entry fits only in what live memory leaves: the oldest kept one goes.
    const d = tokens(10, 4);
    await store.insert(d, ArrayKv.forKeys(d));
    expect(store.stats()).toMatchObject({ entries: 2, evictions: 2 });
    expect(store.stats().bytes + store.stats().liveBytes).toBeLessThanOrEqual(store.stats().budgetBytes);
    // Live memory taking the whole budget leaves nothing kept; a new entry is then not kept in memory.
    store.memory!.growLive(2 * entryBytes(10, SHAPE));
    expect(store.stats()).toMatchObject({ entries: 0, bytes: 0 });
    await store.insert(tokens(10, 5), ArrayKv.forKeys(tokens(10, 5)));
    expect(store.stats().entries).toBe(0);
    store.memory!.shrinkLive(3 * entryBytes(10, SHAPE));
    expect(store.stats().liveBytes).toBe(0);
    await store.insert(tokens(10, 5), ArrayKv.forKeys(tokens(10, 5)));
    expect(store.stats().entries).toBe(1);
  });

  it('a store without a budget bounds nothing', () => {
    expect(createKvStore({ budgetBytes: 0 }).memory).toBeUndefined();
  });
});

describe('Batcher under a KV memory budget (vis1 fixture bundle)', () => {
  it('a job’s live caches evict kept entries (least recently used first) to stay within the budget; the answer is unchanged', async () => {
    const p = await idsPrompt(30, 31);
    const oneJob = liveBound(shape, empty, [job(p.length, s.numWords)]);
    const store = createKvStore({ budgetBytes: Math.ceil(oneJob), codec: 'fp32' });
    const batcher = new Batcher({ graphs, maxRows: 2, maxPositions: s.maxPositions, store });
    const watch = watchBudget(store, batcher);
    // Kept entries filling most of the budget, oldest first.
    const n = Math.floor((oneJob / 4 - 256) / (positionBytes(shape) / 2 + 8) / 2);
    const kept = [0, 1, 2].map((i) => Array.from({ length: n }, (_, k) => `kept${i}-${k}`));
    for (const keys of kept) await store.insert(keys, ArrayKv.forKeys(keys, shape));
    expect(store.stats().entries).toBe(3);
    expect(store.stats().bytes).toBeGreaterThan(oneJob / 2);
    const g = await batcher.generate(p, s, { onToken: watch.check });
    expect(g.ids).toEqual((await generateTokens(graphs, p, s)).ids);
    const st = store.stats();
    expect(st.evictions).toBeGreaterThanOrEqual(1);
    expect(st.entries).toBeLessThan(3);
    // The oldest went first: whatever is left is the newest.
    if (st.entries > 0) expect((await store.match([...kept[2], 'x'], n))?.length).toBe(n);
    expect(await store.match([...kept[0], 'x'], n)).toBeUndefined();
    expect(watch.max()).toBeGreaterThan(oneJob * 0.9);
    expect(batcher.stats()).toMatchObject({ liveBytes: 0, rows: 0, waiting: 0, waitingForMemory: 0 });
  });

  it('a budget that fits one job but not two: the second waits for memory, then answers as alone', async () => {
    const pa = await idsPrompt(40, 37);
    const pb = await idsPrompt(35, 43);
    const [ja, jb] = [job(pa.length, 12), job(pb.length, 12)];
    const one = Math.max(liveBound(shape, empty, [ja]), liveBound(shape, empty, [jb]));
    const two = liveBound(shape, empty, [ja, jb]);
    const budget = Math.ceil((one + two) / 2);
    const store = createKvStore({ budgetBytes: budget, codec: 'fp32' });
    const batcher = new Batcher({ graphs, maxRows: 2, maxPositions: s.maxPositions, store });
    const watch = watchBudget(store, batcher);
    const events: string[] = [];
    const a = batcher.generate(pa, { ...s, numWords: 12 }, { keys: keysOf(pa, 'a'), onToken: () => (events.push('a'), watch.check()) });
    const b = batcher.generate(pb, { ...s, numWords: 12 }, { keys: keysOf(pb, 'b'), onToken: () => (events.push('b'), watch.check()) });
    // A row is free, but the memory is not.
    expect(batcher.stats()).toMatchObject({ waiting: 1, waitingForMemory: 1 });
    const [ga, gb] = await Promise.all([a, b]);
    expect(events.lastIndexOf('a')).toBeLessThan(events.indexOf('b'));
    expect(ga.ids).toEqual((await generateTokens(graphs, pa, { ...s, numWords: 12 })).ids);
    expect(gb.ids).toEqual((await generateTokens(graphs, pb, { ...s, numWords: 12 })).ids);
    expect(batcher.stats()).toMatchObject({ liveBytes: 0, waiting: 0, waitingForMemory: 0, memoryBudgetBytes: budget });
    // Both were kept, in what the live caches left.
    expect(store.stats().entries).toBeGreaterThanOrEqual(1);
  });

  it('a multi-row run with kept caches: live + kept never exceed the budget at any allocation or step, answers are as alone', async () => {
    const prompts = await Promise.all([idsPrompt(60, 29), idsPrompt(20, 41), idsPrompt(45, 53), idsPrompt(25, 59), idsPrompt(50, 61)]);
    const words = [14, 10, 12, 8, 9];
    const jobs = prompts.map((p, i) => job(p.length, words[i]));
    // Room for about two jobs at a time, whichever.
    const budget = Math.ceil(liveBound(shape, empty, [jobs[0], jobs[4]]) * 1.05);
    const store = createKvStore({ budgetBytes: budget, codec: 'fp32' });
    const batcher = new Batcher({ graphs, maxRows: 4, maxPositions: s.maxPositions, store, prefillChunk: 16 });
    const watch = watchBudget(store, batcher);
    for (const i of [0, 1, 2]) {
      const keys = Array.from({ length: 30 }, (_, k) => `old${i}-${k}`);
      await store.insert(keys, ArrayKv.forKeys(keys, shape));
    }
    let sawWaitingForMemory = 0;
    const firstToken: number[] = [];
    const run = (round: string) =>
      Promise.all(
        prompts.map((p, i) =>
          batcher.generate(p, { ...s, numWords: words[i] }, {
            keys: keysOf(p, `${i}-`),
            onToken: (ids) => {
              if (ids.length === 1) firstToken.push(i);
              sawWaitingForMemory = Math.max(sawWaitingForMemory, batcher.stats().waitingForMemory);
              watch.check();
            },
          }).then((g) => [round, g] as const),
        ),
      );
    const want = await Promise.all(prompts.map((p, i) => generateTokens(graphs, p, { ...s, numWords: words[i] })));
    const first = await run('first');
    first.forEach(([, g], i) => expect(g.ids).toEqual(want[i].ids));
    expect(sawWaitingForMemory).toBeGreaterThan(0);
    expect(firstToken.sort()).toEqual([0, 1, 2, 3, 4]);
    expect(store.stats().evictions).toBeGreaterThan(0);
    // What is kept is reused: the last job to finish answers again from its kept prefix.
    const reusedBefore = store.stats().reusedPositions;
    const again = await batcher.generate(prompts[4], { ...s, numWords: words[4] }, { keys: keysOf(prompts[4], '4-'), onToken: watch.check });
    expect(again.ids).toEqual(want[4].ids);
    expect(store.stats().reusedPositions).toBe(reusedBefore + prompts[4].length - 1);
    // A second round, all at once: the first jobs' live caches take the kept ones' room (live
    // first), and the answers are the same.
    const second = await run('second');
    second.forEach(([, g], i) => expect(g.ids).toEqual(want[i].ids));
    expect(batcher.stats()).toMatchObject({ liveBytes: 0, rows: 0, waiting: 0 });
    expect(watch.max()).toBeLessThanOrEqual(budget);
    expect(store.stats().liveBytes).toBe(0);
  });

  it('a job waiting for memory is not overtaken by a later, smaller one that would fit', async () => {
    const pa = await idsPrompt(60, 7);
    const pb = await idsPrompt(60, 11);
    const pc = await idsPrompt(10, 13);
    // b's row is longer than a's: it does not fit beside a even once a's prompt cache is gone.
    const [ja, jb, jc] = [job(pa.length, 30), job(pb.length, 60), job(pc.length, 5)];
    // c would fit beside a; b does not.
    const budget = Math.ceil(liveBound(shape, empty, [ja, jc]));
    expect(liveBound(shape, empty, [ja, jb])).toBeGreaterThan(budget);
    const store = createKvStore({ budgetBytes: budget, codec: 'fp32' });
    const batcher = new Batcher({ graphs, maxRows: 3, maxPositions: s.maxPositions, store });
    const watch = watchBudget(store, batcher);
    const events: string[] = [];
    const a = batcher.generate(pa, { ...s, numWords: 30 }, { onToken: () => (events.push('a'), watch.check()) });
    const b = batcher.generate(pb, { ...s, numWords: 60 }, { onToken: () => (events.push('b'), watch.check()) });
    const c = batcher.generate(pc, { ...s, numWords: 5 }, { onToken: () => (events.push('c'), watch.check()) });
    expect(batcher.stats()).toMatchObject({ waiting: 2, waitingForMemory: 2 });
    const [ga, gb, gc] = await Promise.all([a, b, c]);
    // c started only once b could: after a had finished.
    expect(events.indexOf('c')).toBeGreaterThan(events.lastIndexOf('a'));
    expect(ga.ids).toEqual((await generateTokens(graphs, pa, { ...s, numWords: 30 })).ids);
    expect(gb.ids).toEqual((await generateTokens(graphs, pb, { ...s, numWords: 60 })).ids);
    expect(gc.ids).toEqual((await generateTokens(graphs, pc, { ...s, numWords: 5 })).ids);
  });

  it('a job cancelled while waiting for memory leaves the line; the next one then runs', async () => {
    const pa = await idsPrompt(40, 17);
    const pb = await idsPrompt(30, 19);
    const pc = await idsPrompt(25, 23);
    const budget = Math.ceil(liveBound(shape, empty, [job(pa.length, 30)]) * 1.01);
    const store = createKvStore({ budgetBytes: budget, codec: 'fp32' });
    const batcher = new Batcher({ graphs, maxRows: 3, maxPositions: s.maxPositions, store });
    const watch = watchBudget(store, batcher);
    const ctl = new AbortController();
    const a = batcher.generate(pa, { ...s, numWords: 30 }, { onToken: watch.check });
    const b = batcher.generate(pb, s, { signal: ctl.signal });
    expect(batcher.stats()).toMatchObject({ waiting: 1, waitingForMemory: 1 });
    ctl.abort();
    await expect(b).rejects.toBeInstanceOf(CancelledError);
    expect(batcher.stats()).toMatchObject({ waiting: 0, waitingForMemory: 0 });
    const c = batcher.generate(pc, s, { onToken: watch.check });
    expect(batcher.stats().waitingForMemory).toBe(1);
    const [ga, gc] = await Promise.all([a, c]);
    expect(ga.ids).toEqual((await generateTokens(graphs, pa, { ...s, numWords: 30 })).ids);
    expect(gc.ids).toEqual((await generateTokens(graphs, pc, s)).ids);
    expect(batcher.stats()).toMatchObject({ liveBytes: 0, waiting: 0 });
  });
});
