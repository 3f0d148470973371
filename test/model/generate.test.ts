import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Bundle } from '../../src/model/bundle.ts';
import { checkContext, generateTokens, generateTokensRecompute } from '../../src/model/generate.ts';
import { EngineInputError } from '../../src/model/engine-api.ts';
import { CancelledError } from '../../src/model/errors.ts';
import { FromageGraphs } from '../../src/model/graphs.ts';
import { KvCache, MIN_CACHE_CAPACITY } from '../../src/model/kv-cache.ts';
import { assemblePrompt } from '../../src/model/prompt.ts';
import { openFixtureModel } from './helpers.ts';
import { maxAbsDiff, refJson, refTensor } from './reference.ts';

let bundle: Bundle;
let graphs: FromageGraphs;
let close: (() => Promise<void>) | undefined;
beforeAll(async () => {
  ({ bundle, graphs, close } = await openFixtureModel());
});
afterAll(() => close?.());

const settings = { numWords: 10, seed: 0, maxPositions: 128, retId: 295, retScaleFactor: 1, minWordTokens: 0, temperature: 0, topP: 1 };

describe('KV-cache generation', () => {
  it('matches full recomputation (the reference method): tokens, logits and [RET] embeddings', async () => {
    const c = refJson<Record<string, Record<string, { prompts: { text?: string }[] }>>>('fromage_cases.json').vis1.vii_text_two_rets;
    const prompt = await assemblePrompt(graphs, bundle.tokenizer, [{ kind: 'text', text: c.prompts[0].text! }]);
    const cached = await generateTokens(graphs, prompt, settings, { recordLogits: true });
    const full = await generateTokensRecompute(graphs, prompt, settings, { recordLogits: true });
    expect(cached.ids).toEqual(full.ids);
    cached.stepLogits.forEach((l, i) => expect(maxAbsDiff(l, full.stepLogits[i])).toBeLessThan(1e-3));
    for (let j = 0; j < full.ids.length - 1; j++) expect(maxAbsDiff(cached.embeddings[j]!, full.embeddings[j]!)).toBeLessThan(1e-4);
  });

  it('matches full recomputation past the first capacity (one exact allocation for prompt + num_words)', async () => {
    const ids = [2, ...Array.from({ length: 57 }, (_, i) => 4 + ((i * 37) % 280))];
    const prompt = await assemblePrompt(graphs, bundle.tokenizer, [{ kind: 'ids', ids }]);
    const s = { ...settings, numWords: 12 };
    expect(prompt.length + s.numWords).toBeGreaterThan(MIN_CACHE_CAPACITY);
    const caches: KvCache[] = [];
    const decode = vi.spyOn(graphs, 'decode').mockImplementation(async function (this: FromageGraphs, embeds, cache, keep) {
      caches.push(cache);
      return FromageGraphs.prototype.decode.call(this, embeds, cache, keep);
    });
    let cached;
    try {
      cached = await generateTokens(graphs, prompt, s, { recordLogits: true });
    } finally {
      decode.mockRestore();
    }
    expect(new Set(caches).size).toBe(1);
    expect(caches[0].capacity).toBe(prompt.length + s.numWords);
    const full = await generateTokensRecompute(graphs, prompt, s, { recordLogits: true });
    expect(cached.ids).toEqual(full.ids);
    cached.stepLogits.forEach((l, i) => expect(maxAbsDiff(l, full.stepLogits[i])).toBeLessThan(1e-3));
    for (let j = 0; j < full.ids.length - 1; j++) expect(maxAbsDiff(cached.embeddings[j]!, full.embeddings[j]!)).toBeLessThan(1e-4);
  });

  it('a cache grown by doubling (64 -> 128 mid-answer) decodes like the preallocated one', async () => {
    const ids = [2, ...Array.from({ length: 57 }, (_, i) => 4 + ((i * 37) % 280))];
    const prompt = await assemblePrompt(graphs, bundle.tokenizer, [{ kind: 'ids', ids }]);
    const want = await generateTokens(graphs, prompt, { ...settings, numWords: 12 }, { recordLogits: true });
    const cache = graphs.emptyCache();
    let step = await graphs.decode(prompt.embeds, cache, 1);
    expect(cache.capacity).toBe(MIN_CACHE_CAPACITY);
    for (let i = 0; i < want.ids.length - 1; i++) {
      // Only the softmax row length differs (capacity 64/128 vs 70): float32 summation order.
      expect(maxAbsDiff(step.logits, want.stepLogits[i])).toBeLessThan(1e-4);
      step = await graphs.decode(await graphs.embedTokens([want.ids[i]]), cache, 1);
    }
    expect(cache.length).toBe(prompt.length + want.ids.length - 1);
    expect(cache.capacity).toBe(2 * MIN_CACHE_CAPACITY);
  });

  it('decodes a long input in chunks like one call: kept logits, every [RET] embedding, the cache', async () => {
    const ids = [2, ...Array.from({ length: 57 }, (_, i) => 4 + ((i * 37) % 280))];
    const prompt = await assemblePrompt(graphs, bundle.tokenizer, [{ kind: 'ids', ids }]);
    const chunked = new FromageGraphs(bundle, { prefillChunk: 7 });
    const V = graphs.vocab;
    for (const keep of [1, 10, prompt.length, 0]) {
      const a = graphs.emptyCache();
      const b = chunked.emptyCache();
      const one = await graphs.decode(prompt.embeds, a, keep);
      const many = await chunked.decode(prompt.embeds, b, keep);
      expect(many.logits.length).toBe((keep === 0 ? prompt.length : keep) * V);
      expect(maxAbsDiff(many.logits, one.logits)).toBeLessThan(1e-4);
      expect(maxAbsDiff(many.retEmbeddings, one.retEmbeddings)).toBeLessThan(1e-5);
      expect(b.length).toBe(prompt.length);
      // The next step sees the same cache.
      const next = await graphs.embedTokens([7]);
      expect(maxAbsDiff((await chunked.decode(next, b, 1)).logits, (await graphs.decode(next, a, 1)).logits)).toBeLessThan(1e-4);
    }
    const s = { ...settings, numWords: 6 };
    const want = await generateTokens(graphs, prompt, s);
    expect((await generateTokens(chunked, prompt, s)).ids).toEqual(want.ids);
  });

  it('reproduces the legacy greedy run (vis1.gen_cache.tokens / step_logits)', async () => {
    const vemb = refTensor('vis1.visual_embs_captioning').data.slice(0, 64);
    const ids = Array.from(refTensor('prompt_ids').data);
    const prompt = await assemblePrompt(graphs, bundle.tokenizer, [{ kind: 'image', visualEmbs: vemb }, { kind: 'ids', ids }]);
    expect(maxAbsDiff(prompt.embeds, refTensor('vis1.input_embs').data)).toBeLessThan(1e-4);
    const out = await generateTokens(graphs, prompt, settings, { recordLogits: true });
    expect(out.ids).toEqual(Array.from(refTensor('vis1.gen_cache.tokens').data));
    const ref = refTensor('vis1.gen_cache.step_logits').data;
    out.stepLogits.forEach((l, i) => expect(maxAbsDiff(l, ref.subarray(i * 296, (i + 1) * 296))).toBeLessThan(1e-3));
  });

  it('stops between steps when cancelled', async () => {
    const prompt = await assemblePrompt(graphs, bundle.tokenizer, [{ kind: 'text', text: 'hi' }]);
    const ctl = new AbortController();
    const seen: number[] = [];
    const err = await generateTokens(graphs, prompt, settings, { signal: ctl.signal, onToken: (ids) => (seen.push(ids.length), ctl.abort()) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CancelledError);
    expect(seen).toEqual([1]);
  });

  it('refuses a context overflow before running any graph', () => {
    expect(() => checkContext(120, 10, 128)).toThrow(EngineInputError);
    expect(() => checkContext(120, 8, 128)).not.toThrow();
    expect(() => checkContext(128, 0, 128)).not.toThrow();
    expect(() => checkContext(129, 0, 128)).toThrow(/model holds 128/);
  });
});
