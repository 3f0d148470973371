/**
 * Every on-disk layout of the fixtures converts to the same model: fp32 OPT saved from
 * OPTForCausalLM (`model.decoder.*` + lm_head), fp32 FROMAGe checkpoints, CLIP from
 * pytorch_model.bin, and an fp16 bundle.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { argmax, assembleDir, cleanupTemp, CLIP_DIR, convertToTemp, f32, FIX, FROMAGE_VIS1, FROMAGE_VIS4, i64, maxAbsDiff, openBundle, OPT_FP32_DIR, optTokenizerFiles, ref, refInt, runDecoder } from './helpers.ts';

const H = 64;
const L = 2;
const NH = 4;
const V = 296;

afterAll(cleanupTemp);

async function greedy(bundle: Awaited<ReturnType<typeof openBundle>>, embs: Float32Array, steps: number): Promise<{ tokens: number[]; logits: Float32Array[] }> {
  let step = await runDecoder(bundle.decoder, embs, H, L, NH, undefined, 1);
  const tokens: number[] = [];
  const logits: Float32Array[] = [];
  for (let s = 0; s < steps; s++) {
    logits.push(step.logits);
    tokens.push(argmax(step.logits));
    const e = await bundle.embed.run({ input_ids: i64([tokens[s]], [1, 1]) });
    step = await runDecoder(bundle.decoder, e.inputs_embeds.data as Float32Array, H, L, NH, step.cache, 1);
  }
  return { tokens, logits };
}

describe.each(['vis1', 'vis4'] as const)('fp32 weights (variants/opt_fp32 + variants/fromage_fp32/%s)', (variant) => {
  it('logits and greedy tokens match variants.fp32_weights.*', async () => {
    // The variant folders hold weights only; tokenizer files and model_args.json come from the
    // canonical folders.
    const optDir = await assembleDir({
      ...optTokenizerFiles(),
      'config.json': join(OPT_FP32_DIR, 'config.json'),
      'pytorch_model.bin': join(OPT_FP32_DIR, 'pytorch_model.bin'),
    });
    const fromageDir = await assembleDir({
      'model_args.json': join(variant === 'vis1' ? FROMAGE_VIS1 : FROMAGE_VIS4, 'model_args.json'),
      'pretrained_ckpt.pth.tar': join(FIX, 'variants/fromage_fp32', variant, 'pretrained_ckpt.pth.tar'),
    });
    const r = await convertToTemp({ optDir, fromageDir });
    const bundle = await openBundle(r.outDir);
    try {
      // input_embs of the fp32 variant: visual embs from its own vision graph + its own embed.
      const px = await ref('pixel_values');
      const vis = await bundle.vision.run({ pixel_values: f32(px.data, px.shape) });
      const nVis = variant === 'vis1' ? 1 : 4;
      const ids = await refInt('prompt_ids');
      const emb = await bundle.embed.run({ input_ids: i64(ids, [1, ids.length]) });
      const embs = new Float32Array([...(vis.visual_embs.data as Float32Array).subarray(0, nVis * H), ...(emb.inputs_embeds.data as Float32Array)]);
      const T = embs.length / H;
      const full = await runDecoder(bundle.decoder, embs, H, L, NH, undefined, T);
      expect(maxAbsDiff(full.logits, (await ref(`variants.fp32_weights.${variant}.logits`)).data)).toBeLessThan(2e-4);
      const { tokens } = await greedy(bundle, embs, 10);
      expect(tokens).toEqual(await refInt(`variants.fp32_weights.${variant}.gen_nocache.tokens`));
    } finally {
      await bundle.release();
    }
  });
});

describe('CLIP from pytorch_model.bin (no safetensors in the folder)', () => {
  it('gives the same pooler_output as the safetensors file', async () => {
    const clipBin = await assembleDir(Object.fromEntries(['config.json', 'preprocessor_config.json', 'pytorch_model.bin'].map((f) => [f, join(CLIP_DIR, f)])));
    const r = await convertToTemp({ clipDir: clipBin });
    expect(r.manifest.sources.some((s) => s.path === 'clip/pytorch_model.bin')).toBe(true);
    const bundle = await openBundle(r.outDir);
    try {
      const px = await ref('pixel_values');
      const out = await bundle.vision.run({ pixel_values: f32(px.data, px.shape) });
      expect(maxAbsDiff(out.pooler_output.data as Float32Array, (await ref('clip.pooler_output')).data)).toBeLessThan(2e-5);
    } finally {
      await bundle.release();
    }
  });
});

describe('fp16 bundle', () => {
  it('stores fp16 weights and still matches the fp16-checkpoint reference (the OPT weights are fp16 already)', async () => {
    const r = await convertToTemp({ weights: 'fp16' });
    expect(r.manifest.weights).toEqual({ dtype: 'fp16' });
    const bundle = await openBundle(r.outDir);
    try {
      const embs = (await ref('vis1.input_embs')).data;
      const { tokens, logits } = await greedy(bundle, embs, 10);
      expect(tokens).toEqual(await refInt('vis1.gen_cache.tokens'));
      const want = (await ref('vis1.gen_cache.step_logits')).data;
      logits.forEach((l, s) => expect(maxAbsDiff(l, want.subarray(s * V, (s + 1) * V))).toBeLessThan(1.5e-4));
      // CLIP is fp32 upstream: fp16 storage costs a little precision there.
      const px = await ref('pixel_values');
      const out = await bundle.vision.run({ pixel_values: f32(px.data, px.shape) });
      expect(maxAbsDiff(out.pooler_output.data as Float32Array, (await ref('clip.pooler_output')).data)).toBeLessThan(1e-2);
    } finally {
      await bundle.release();
    }
  });
});
