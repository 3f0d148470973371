/**
 * Exactness of serving (issue 12): reusing kept prefixes and decoding in a batch change how much
 * is computed, never the answer. The oracle's dialogue turn by turn, and a long synthetic
 * dialogue (images in some turns, history trimmed when it outgrows the model), answered with
 * reuse, batching, both and neither: identical ids every turn, logits within the KV-cache
 * test's tolerance.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Bundle } from '../../src/model/bundle.ts';
import { generateForImagesAndTexts, type FromageContext, type FromageResult } from '../../src/model/fromage.ts';
import type { FromageGraphs } from '../../src/model/graphs.ts';
import { preprocessImage, type LoadMode } from '../../src/model/preprocess.ts';
import { tokenizePieces, promptLength, type PromptPiece } from '../../src/model/prompt.ts';
import { Batcher } from '../../src/serving/batcher.ts';
import type { KvStore } from '../../src/serving/kv-types.ts';
import { imageIdentity } from '../../src/serving/position-keys.ts';
import { createKvStore } from '../../src/serving/prefix-store.ts';
import { openFixtureModel } from '../model/helpers.ts';
import { FIXTURES, maxAbsDiff, refJson } from '../model/reference.ts';

// The oracle's own KV-cache vs full-recompute gap is up to 3.4e-4 (test/model/fromage-oracle.test.ts).
const LOGIT_TOL = 1e-3;
// Kept caches stored as fp16 (FROMAGE_KV_CODEC=fp16) are not exact: on this fixture the logits
// moved by up to 0.18 (ids unchanged; the smallest top-1/top-2 margin of the oracle dialogue is
// 0.37). The bound only catches a broken copy; exactness within LOGIT_TOL needs the fp32 codec.
const FP16_LOGIT_TOL = 0.5;

type PromptJson = { image: string; load: LoadMode } | { text: string };
interface TurnJson {
  prompts: PromptJson[];
  kwargs: { num_words: number; ret_scale_factor: number; max_num_rets: number };
  generated_ids_full: number[];
  return_outputs: (string | number[])[];
}

let bundle: Bundle;
let graphs: FromageGraphs;
let close: (() => Promise<void>) | undefined;
beforeAll(async () => {
  ({ bundle, graphs, close } = await openFixtureModel());
});
afterAll(() => close?.());

/** A prompt item: text, or a fixture image with its load mode. */
type Item = { text: string } | { image: string; load: LoadMode };

const visual = new Map<string, Float32Array>();
async function pieces(items: readonly Item[]): Promise<{ pieces: PromptPiece[]; identities: string[] }> {
  const out: PromptPiece[] = [];
  const identities: string[] = [];
  for (const item of items) {
    if ('text' in item) {
      out.push({ kind: 'text', text: item.text });
      continue;
    }
    const data = readFileSync(join(FIXTURES, item.image));
    const id = imageIdentity(createHash('sha256').update(data).digest('hex'), item.load);
    let v = visual.get(id);
    if (!v) {
      const p = bundle.manifest.preprocess;
      const px = await preprocessImage(data, { size: p.size, cropSize: p.crop_size, rescaleFactor: p.rescale_factor, mean: p.image_mean, std: p.image_std }, item.load);
      v = (await graphs.encodeImage(px.pixelValues)).visualEmbs;
      visual.set(id, v);
    }
    out.push({ kind: 'image', visualEmbs: v });
    identities.push(id);
  }
  return { pieces: out, identities };
}

interface Mode {
  readonly name: string;
  readonly batch: number;
  /** A fresh store per run, or none. */
  readonly store?: () => KvStore;
}

/** One way of answering: a batcher (with or without a store), or plain generateTokens. */
function answerer(mode: Mode | undefined): { answer: (items: readonly Item[], settings: Parameters<typeof generateForImagesAndTexts>[2]) => Promise<FromageResult>; store?: KvStore; batcher?: Batcher } {
  const store = mode?.store?.();
  const batcher = mode ? new Batcher({ graphs, maxRows: mode.batch, maxPositions: bundle.manifest.model.max_positions, store }) : undefined;
  const ctx: FromageContext = { graphs: batcher?.graphs ?? graphs, tokenizer: bundle.tokenizer, manifest: bundle.manifest, generate: batcher?.generate };
  return {
    store,
    batcher,
    answer: async (items, settings) => {
      const p = await pieces(items);
      return generateForImagesAndTexts(ctx, p.pieces, settings, { recordLogits: true, imageIdentities: p.identities });
    },
  };
}

const exactStore = (): KvStore => createKvStore({ budgetBytes: 64 * 1024 * 1024, codec: 'fp32' });
const fp16Store = (): KvStore => createKvStore({ budgetBytes: 64 * 1024 * 1024, codec: 'fp16' });

function outputsAsReference(r: FromageResult): (string | number[])[] {
  return r.outputs.map((o) => (o.kind === 'text' ? o.text : o.images.map((i) => i.row)));
}

describe('serving exactness: the oracle dialogue (vis1 ii_dialogue), turn by turn', () => {
  const turns = refJson<{ vis1: { ii_dialogue: { turns: TurnJson[] } } }>('fromage_cases.json').vis1.ii_dialogue.turns;
  for (const mode of [
    { name: 'reuse off', batch: 1 },
    { name: 'reuse on (fp32 kept caches)', batch: 1, store: exactStore },
    { name: 'reuse on (fp16 kept caches)', batch: 1, store: fp16Store },
  ] satisfies Mode[]) {
    it(`${mode.name}: the reference's ids and text every turn`, async () => {
      const { answer, store } = answerer(mode);
      const plain = answerer(undefined);
      for (const [t, turn] of turns.entries()) {
        const k = turn.kwargs;
        const settings = { numWords: k.num_words, retScaleFactor: k.ret_scale_factor, maxNumRets: k.max_num_rets };
        const r = await answer(turn.prompts, settings);
        expect(r.generatedIdsFull).toEqual(turn.generated_ids_full);
        expect(outputsAsReference(r)).toEqual(turn.return_outputs);
        const want = await plain.answer(turn.prompts, settings);
        const tol = mode.store === fp16Store ? FP16_LOGIT_TOL : LOGIT_TOL;
        r.stepLogits.forEach((l, i) => expect(maxAbsDiff(l, want.stepLogits[i])).toBeLessThan(tol));
        // From the second turn on, the previous turn's prompt (at least) was reused.
        if (store && t > 0) expect(store.stats().reusedPositions).toBeGreaterThan(0);
      }
      await store?.close();
    });
  }
});

/**
 * A demo-style dialogue: each turn appends its image (every third turn), then `Q: ...\nA:`; the
 * answer's text plus `\n` joins the history; the oldest turns are dropped when the prompt and
 * the answer would not fit (which shifts every position: reuse must then find nothing).
 */
async function dialogue(answer: (items: readonly Item[], settings: Parameters<typeof generateForImagesAndTexts>[2]) => Promise<FromageResult>, seed: number, turns: number): Promise<FromageResult[]> {
  const images = ['images/dialogue_1.png', 'images/landscape.png', 'images/dialogue_2.jpg', 'images/portrait.jpg'];
  const words = ['red', 'what', 'is', 'this', 'circle', 'round', 'sky', 'dog', 'and', 'why'];
  const history: Item[][] = [];
  const out: FromageResult[] = [];
  const settings = { numWords: 6, retScaleFactor: 1.3, maxNumRets: 2 };
  for (let t = 0; t < turns; t++) {
    const turn: Item[] = [];
    if ((t + seed) % 3 === 0) turn.push({ image: images[(t + seed) % images.length], load: 'demo_upload' }, { text: '' });
    const n = 2 + ((t * 7 + seed) % 4);
    turn.push({ text: `Q: ${Array.from({ length: n }, (_, i) => words[(t * 3 + i * 5 + seed) % words.length]).join(' ')}?\nA:` });
    history.push(turn);
    for (;;) {
      const p = await pieces(history.flat());
      const len = promptLength(tokenizePieces(bundle.tokenizer, p.pieces, bundle.manifest.model.n_visual_tokens));
      if (len + settings.numWords <= bundle.manifest.model.max_positions) break;
      history.shift();
    }
    const r = await answer(history.flat(), settings);
    out.push(r);
    const texts = r.outputs.flatMap((o) => (o.kind === 'text' ? [o.text] : []));
    history[history.length - 1] = [...turn, { text: `${texts.join(' ')}\n` }];
  }
  return out;
}

describe('serving exactness: a long synthetic dialogue (12 turns, images in some, trimmed history)', () => {
  const TURNS = 12;
  const DIALOGUES = 3;
  let reference: FromageResult[][];
  beforeAll(async () => {
    const plain = answerer(undefined);
    reference = [];
    for (let d = 0; d < DIALOGUES; d++) reference.push(await dialogue(plain.answer, d, TURNS));
  });

  function expectSameTurns(got: FromageResult[][], logitTol: number): void {
    got.forEach((turns, d) =>
      turns.forEach((r, t) => {
        const want = reference[d][t];
        expect({ d, t, ids: r.generatedIdsFull }).toEqual({ d, t, ids: want.generatedIdsFull });
        expect(outputsAsReference(r)).toEqual(outputsAsReference(want));
        r.stepLogits.forEach((l, i) => expect(maxAbsDiff(l, want.stepLogits[i])).toBeLessThan(logitTol));
      }),
    );
  }

  it('the dialogues are long enough to trim and use images', () => {
    expect(reference[0]).toHaveLength(TURNS);
    const lengths = reference.flat().map((r) => r.prompt.length);
    expect(Math.max(...lengths)).toBeGreaterThan(100);
    expect(reference.flat().some((r, i, all) => i > 0 && r.prompt.length < all[i - 1].prompt.length)).toBe(true);
  });

  it('reuse: one dialogue at a time with kept caches', async () => {
    const a = answerer({ name: 'reuse', batch: 1, store: exactStore });
    const got: FromageResult[][] = [];
    for (let d = 0; d < DIALOGUES; d++) got.push(await dialogue(a.answer, d, TURNS));
    expectSameTurns(got, LOGIT_TOL);
    // Trimmed turns shift every position and so reuse nothing; the others reuse their history.
    expect(a.store!.stats().reusedPositions).toBeGreaterThan(500);
  });

  it('batching: the dialogues answered together, no kept caches', async () => {
    const a = answerer({ name: 'batch', batch: DIALOGUES });
    const got = await Promise.all(Array.from({ length: DIALOGUES }, (_, d) => dialogue(a.answer, d, TURNS)));
    expectSameTurns(got, LOGIT_TOL);
    const st = a.batcher!.stats();
    expect(st.rowSteps / st.steps).toBeGreaterThan(1.5);
  });

  it('both: the dialogues answered together with kept caches (fp32, then fp16)', async () => {
    for (const store of [exactStore, fp16Store]) {
      const a = answerer({ name: 'both', batch: DIALOGUES, store });
      const got = await Promise.all(Array.from({ length: DIALOGUES }, (_, d) => dialogue(a.answer, d, TURNS)));
      expectSameTurns(got, store === exactStore ? LOGIT_TOL : FP16_LOGIT_TOL);
      expect(a.store!.stats().reusedPositions).toBeGreaterThan(0);
      await a.store!.close();
    }
  });
});
