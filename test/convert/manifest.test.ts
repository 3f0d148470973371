import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MANIFEST_FILE, manifestSchema } from '../../src/model/manifest.ts';
import { cleanupTemp, CLIP_DIR, convertToTemp, FROMAGE_VIS1, OPT_DIR } from './helpers.ts';

afterAll(cleanupTemp);

describe('bundle manifest and layout', () => {
  it('fromage.json validates and records dimensions, token ids, preprocessing and hashed sources', async () => {
    const r = await convertToTemp({ weights: 'int8', blockSize: 64 });
    const onDisk = manifestSchema.parse(JSON.parse(await readFile(join(r.outDir, MANIFEST_FILE), 'utf8')));
    expect(onDisk).toEqual(r.manifest);
    expect(onDisk.model).toMatchObject({ hidden_size: 64, num_layers: 2, num_heads: 4, head_dim: 16, ffn_dim: 256, vocab_size: 296, max_positions: 128, n_visual_tokens: 1, shared_emb_dim: 16, clip_hidden_size: 48, image_size: 32 });
    // logit_scale = log(1/0.07) + 0.25, rounded to bf16 in the checkpoint.
    expect(onDisk.model.logit_scale).toBeCloseTo(Math.log(1 / 0.07) + 0.25, 1);
    expect(onDisk.tokens).toEqual({ bos: 2, eos: 2, pad: 1, image: 294, ret: 295, newline: 202 });
    expect(onDisk.preprocess).toMatchObject({ size: 32, crop_size: 32, resample: 'bicubic' });
    expect(onDisk.weights).toEqual({ dtype: 'int8', block_size: 64 });
    expect(onDisk.fromage_args.n_visual_tokens).toBe(1);

    const paths = onDisk.sources.map((s) => s.path);
    expect(paths).toEqual(
      expect.arrayContaining([
        'opt/config.json',
        'opt/vocab.json',
        'opt/merges.txt',
        'opt/pytorch_model.bin.index.json',
        'opt/pytorch_model-00001-of-00003.bin',
        'opt/pytorch_model-00002-of-00003.bin',
        'opt/pytorch_model-00003-of-00003.bin',
        'clip/config.json',
        'clip/preprocessor_config.json',
        'clip/model.safetensors',
        'fromage/model_args.json',
        'fromage/pretrained_ckpt.pth.tar',
      ]),
    );
    const dirs: Record<string, string> = { opt: OPT_DIR, clip: CLIP_DIR, fromage: FROMAGE_VIS1 };
    for (const s of onDisk.sources) {
      const file = join(dirs[dirname(s.path)], s.path.slice(s.path.indexOf('/') + 1));
      const bytes = await readFile(file);
      expect(s.sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
      expect(s.bytes).toBe((await stat(file)).size);
    }

    expect((await readdir(r.outDir)).sort()).toEqual(
      ['decoder.onnx', 'decoder.onnx.data', 'embed.onnx', 'embed.onnx.data', 'fromage.json', 'tokenizer.json', 'vision.onnx', 'vision.onnx.data'].sort(),
    );
    // The temp dir was renamed, not copied: nothing else next to the bundle.
    expect(await readdir(dirname(r.outDir))).toEqual(['bundle']);
  });

  it('the bundle id depends on the options, not on the time of conversion', async () => {
    const a = await convertToTemp({ weights: 'fp32' });
    const b = await convertToTemp({ weights: 'fp32' });
    const c = await convertToTemp({ weights: 'fp16' });
    expect(a.manifest.id).toBe(b.manifest.id);
    expect(a.manifest.id).not.toBe(c.manifest.id);
  });
});
