import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openBundle, type Bundle } from '../../src/model/bundle.ts';
import { checkContext, generateTokens, generateTokensRecompute } from '../../src/model/generate.ts';
import { EngineInputError } from '../../src/model/engine-api.ts';
import { CancelledError } from '../../src/model/errors.ts';
import { FromageGraphs } from '../../src/model/graphs.ts';
import { assemblePrompt } from '../../src/model/prompt.ts';
import { convertFixtureBundle } from './helpers.ts';
import { maxAbsDiff, refJson, refTensor } from './reference.ts';

let bundle: Bundle;
let graphs: FromageGraphs;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  const conv = await convertFixtureBundle('vis1');
  cleanup = conv.cleanup;
  bundle = await openBundle(conv.dir, { threads: 1 });
  graphs = new FromageGraphs(bundle);
});
afterAll(async () => {
  await bundle?.release();
  await cleanup?.();
});

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
