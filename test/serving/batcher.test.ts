/**
 * The batcher on the fixture bundle: rows decoded together get exactly what they get alone,
 * whatever their lengths; prefill chunks take turns with decode steps; a cancelled row frees its
 * place for a waiting job without changing the others; kept prefixes are reused.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Bundle } from '../../src/model/bundle.ts';
import { CancelledError } from '../../src/model/errors.ts';
import { generateTokens, promptEmbeddings, type GenerateSettings, type Generated } from '../../src/model/generate.ts';
import { logLikelihood } from '../../src/model/loglik.ts';
import { FromageGraphs } from '../../src/model/graphs.ts';
import { assemblePrompt, type AssembledPrompt } from '../../src/model/prompt.ts';
import { Batcher } from '../../src/serving/batcher.ts';
import type { KvStore } from '../../src/serving/kv-types.ts';
import { openFixtureBatch, type FixtureBatch } from './fixture-batch.ts';
import { maxAbsDiff } from '../model/reference.ts';
import { SimpleKvStore } from './simple-store.ts';

let bundle: Bundle;
let graphs: FromageGraphs;
let s: GenerateSettings;
let fixture: FixtureBatch;
beforeAll(async () => {
  fixture = await openFixtureBatch();
  ({ bundle, graphs, settings: s } = fixture);
});
afterAll(async () => {
  await fixture?.close();
});

const idsPrompt = (n: number, mul: number): Promise<AssembledPrompt> => fixture.idsPrompt(n, mul);

function expectSame(got: Generated, want: Generated): void {
  expect(got.ids).toEqual(want.ids);
  expect(got.stepLogits).toHaveLength(want.stepLogits.length);
  got.stepLogits.forEach((l, i) => expect(maxAbsDiff(l, want.stepLogits[i])).toBeLessThan(1e-4));
  got.embeddings.forEach((e, i) => (e ? expect(maxAbsDiff(e, want.embeddings[i]!)).toBeLessThan(1e-5) : expect(want.embeddings[i]).toBeUndefined()));
}

describe('Batcher (vis1 fixture bundle)', () => {
  it('rows of very different lengths (a 9-position question beside a 110-position prompt), greedy or sampled, each get the answer they get alone', async () => {
    const short = await assemblePrompt(graphs, bundle.tokenizer, [{ kind: 'text', text: 'Q: hi\nA:' }]);
    const long = await idsPrompt(110, 53);
    const mid = await idsPrompt(47, 37);
    const jobs: [AssembledPrompt, GenerateSettings][] = [
      [short, { ...s, numWords: 16 }],
      [long, { ...s, numWords: 12 }],
      [mid, { ...s, numWords: 14, retScaleFactor: 1.8 }],
      // Sampling: each row draws from its own seeded generator.
      [mid, { ...s, numWords: 14, temperature: 0.8, topP: 0.9, seed: 5 }],
    ];
    expect(short.length).toBeLessThan(12);
    const alone = await Promise.all(jobs.map(([p, js]) => generateTokens(graphs, p, js, { recordLogits: true })));
    const batcher = new Batcher({ graphs, maxRows: 4, maxPositions: s.maxPositions });
    const together = await Promise.all(jobs.map(([p, js]) => batcher.generate(p, js, { recordLogits: true })));
    together.forEach((g, i) => expectSame(g, alone[i]));
    const st = batcher.stats();
    // Most steps decoded more than one row.
    expect(st.rowSteps / st.steps).toBeGreaterThan(1.5);
    expect(st.rows).toBe(0);
  });

  it('a long prefill runs in chunks between the steps of a row already answering', async () => {
    const batcher = new Batcher({ graphs, maxRows: 2, maxPositions: s.maxPositions, prefillChunk: 8 });
    const first = await idsPrompt(20, 41);
    const second = await idsPrompt(100, 29);
    const events: string[] = [];
    let startSecond!: () => void;
    const secondStarted = new Promise<void>((r) => (startSecond = r));
    const a = batcher.generate(first, { ...s, numWords: 40 }, { onToken: (ids) => (events.push('a'), ids.length === 2 && startSecond()) });
    await secondStarted;
    events.push('b-start');
    const b = batcher.generate(second, { ...s, numWords: 8 }, { onToken: () => events.push('b') });
    const [ga, gb] = await Promise.all([a, b]);
    const between = events.slice(events.indexOf('b-start'), events.indexOf('b'));
    // 100 positions in chunks of 8: 13 chunks, with a step of the first row between each two.
    expect(between.filter((e) => e === 'a').length).toBeGreaterThanOrEqual(12);
    expectSame(ga, await generateTokens(graphs, first, { ...s, numWords: 40 }, {}));
    expect(gb.ids).toEqual((await generateTokens(graphs, second, { ...s, numWords: 8 })).ids);
  });

  it('a job cancelled mid-batch frees its row for a waiting job; the other rows answer as alone', async () => {
    const batcher = new Batcher({ graphs, maxRows: 2, maxPositions: s.maxPositions });
    const pa = await idsPrompt(30, 31);
    const pb = await idsPrompt(40, 43);
    const pc = await idsPrompt(25, 47);
    const order: string[] = [];
    const ctl = new AbortController();
    const a = batcher.generate(pa, { ...s, numWords: 40 }, { recordLogits: true, onToken: () => order.push('a') });
    const b = batcher.generate(pb, { ...s, numWords: 40 }, { signal: ctl.signal, onToken: (ids) => ids.length === 3 && ctl.abort() });
    const c = batcher.generate(pc, { ...s, numWords: 10 }, { recordLogits: true, onToken: () => order.push('c') });
    await expect(b).rejects.toBeInstanceOf(CancelledError);
    const [ga, gc] = await Promise.all([a, c]);
    // c got b's row while a was still answering.
    expect(order.indexOf('c')).toBeLessThan(order.lastIndexOf('a'));
    expectSame(ga, await generateTokens(graphs, pa, { ...s, numWords: 40 }, { recordLogits: true }));
    expectSame(gc, await generateTokens(graphs, pc, { ...s, numWords: 10 }, { recordLogits: true }));
    expect(batcher.stats()).toMatchObject({ rows: 0, waiting: 0 });
  });

  it('a job waiting for a row can be cancelled before it starts', async () => {
    const batcher = new Batcher({ graphs, maxRows: 1, maxPositions: s.maxPositions });
    const p = await idsPrompt(10, 7);
    const ctl = new AbortController();
    const a = batcher.generate(p, { ...s, numWords: 20 }, {});
    const b = batcher.generate(p, s, { signal: ctl.signal });
    expect(batcher.stats().waiting).toBe(1);
    ctl.abort();
    await expect(b).rejects.toBeInstanceOf(CancelledError);
    expect(batcher.stats().waiting).toBe(0);
    expect((await a).ids).toHaveLength(20);
  });

  it('reuses the longest kept prefix and prefills only the rest, with the same answer', async () => {
    const store = new SimpleKvStore();
    const batcher = new Batcher({ graphs, maxRows: 2, maxPositions: s.maxPositions, store });
    const turn1 = await idsPrompt(40, 37);
    const keys1 = [...Array(turn1.length).keys()].map((i) => `k${i}`);
    const g1 = await batcher.generate(turn1, s, { keys: keys1 });
    expect(store.entries).toHaveLength(1);
    // The kept entry: the prompt plus the tokens fed back.
    expect(store.entries[0].keys.length).toBe(turn1.length + g1.ids.length - 1);
    const turn2 = await idsPrompt(70, 37);
    const keys2 = [...keys1, ...Array.from({ length: 30 }, (_, i) => `x${i}`)];
    const want = await generateTokens(graphs, turn2, s, { recordLogits: true });
    const g2 = await batcher.generate(turn2, s, { keys: keys2, recordLogits: true });
    expect(store.reused).toBe(40);
    expect(store.prefilled).toBe(40 + 30);
    expect(g2.ids).toEqual(want.ids);
    g2.stepLogits.forEach((l, i) => expect(maxAbsDiff(l, want.stepLogits[i])).toBeLessThan(1e-3));
  });

  it('a store that fails costs only the reuse: the prompt is prefilled whole, with a warning', async () => {
    const broken: KvStore = {
      match: async () => ({ length: 5, copyInto: async () => Promise.reject(new Error('disk gone')) }),
      insert: async () => Promise.reject(new Error('disk full')),
      notePrefilled: () => undefined,
      stats: () => ({ entries: 0, bytes: 0, budgetBytes: 0, reusedPositions: 0, prefilledPositions: 0, evictions: 0, spillWrites: 0, spillReads: 0 }),
      close: async () => undefined,
    };
    const warnings: string[] = [];
    const batcher = new Batcher({ graphs, maxRows: 1, maxPositions: s.maxPositions, store: broken, warn: (m) => warnings.push(m) });
    const p = await idsPrompt(20, 11);
    const g = await batcher.generate(p, s, { keys: [...Array(p.length).keys()] });
    expect(g.ids).toEqual((await generateTokens(graphs, p, s)).ids);
    // The cache is handed to the store in the background; close waits for it.
    await batcher.close();
    expect(warnings.join('\n')).toMatch(/not reused \(disk gone\)[\s\S]*could not keep a KV cache \(disk full\)/);
  });

  it('log-likelihood and prompt embeddings take turns with the rows answering and score as alone', async () => {
    const batcher = new Batcher({ graphs, maxRows: 2, maxPositions: s.maxPositions, prefillChunk: 8 });
    const p = await idsPrompt(30, 13);
    const pieces = [{ kind: 'text' as const, text: 'a photo of a red circle and a dog in the sky' }];
    const wantLl = await logLikelihood(graphs, bundle.tokenizer, pieces, s.maxPositions);
    const wantEmb = await promptEmbeddings(graphs, p, s.maxPositions);
    const answer = batcher.generate(p, { ...s, numWords: 30 }, {});
    const [ll, emb, g] = await Promise.all([logLikelihood(batcher.graphs, bundle.tokenizer, pieces, s.maxPositions), promptEmbeddings(batcher.graphs, p, s.maxPositions), answer]);
    expect(Math.abs(ll - wantLl)).toBeLessThan(1e-5);
    expect(maxAbsDiff(emb, wantEmb)).toBeLessThan(1e-5);
    expect(g.ids).toEqual((await generateTokens(graphs, p, { ...s, numWords: 30 })).ids);
  });
});
