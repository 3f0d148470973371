import { writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { float32ToFloat16Bits } from '../../../src/convert/quantize.ts';
import { CheckpointError, openCheckpoint, sha256File } from '../../../src/convert/readers/index.ts';
import type { TensorSource } from '../../../src/convert/tensor-source.ts';
import { fixture, tempDir } from './helpers.ts';

const OPT_DIR = fixture('facebook', 'opt-6.7b');
const OPT_FP32 = fixture('variants', 'opt_fp32', 'pytorch_model.bin');
const CLIP_DIR = fixture('openai', 'clip-vit-large-patch14');

async function withSource<T>(path: string, fn: (s: TensorSource) => Promise<T>): Promise<T> {
  const s = await openCheckpoint(path);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

function u16(bytes: Uint8Array): Uint16Array {
  return new Uint16Array(bytes.slice().buffer);
}

/** fp32 -> bf16 bits, round to nearest even (torch's .to(torch.bfloat16) for finite values). */
function bf16Bits(x: number): number {
  const u = new Uint32Array(Float32Array.of(x).buffer)[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

describe('OPT checkpoints', () => {
  it('reads the sharded fp16 .bin checkpoint through its index, every tensor, decoder.* keys, no lm_head', async () => {
    await withSource(OPT_DIR, async (s) => {
      const keys = s.keys();
      expect(keys).toHaveLength(36);
      expect(keys.every((k) => k.startsWith('decoder.'))).toBe(true);
      expect(s.has('lm_head.weight')).toBe(false);
      expect(s.info('decoder.embed_tokens.weight')).toMatchObject({ dtype: 'float16', shape: [300, 64] });
      expect(s.info('decoder.embed_positions.weight').shape).toEqual([130, 64]);
      expect(s.files().map((f) => basename(f))).toEqual([1, 2, 3].map((i) => `pytorch_model-0000${i}-of-00003.bin`));
      for (const k of keys) {
        const info = s.info(k);
        const f = await s.readFloat32(k);
        expect(f.length).toBe(info.shape.reduce((a, b) => a * b, 1));
        expect(f.every(Number.isFinite)).toBe(true);
      }
    });
  });

  it('canonical fp16 shards == fp32 variant rounded to fp16 (opt.canonical_equals_fp32_variant_rounded_to_fp16), and readFloat32 upcasts exactly', async () => {
    const fp16 = await openCheckpoint(OPT_DIR);
    const fp32 = await openCheckpoint(OPT_FP32);
    try {
      expect(fp32.keys().sort()).toEqual([...fp16.keys().map((k) => `model.${k}`), 'lm_head.weight'].sort());
      for (const k of fp16.keys()) {
        const raw = await fp16.readRaw(k);
        expect(raw.dtype).toBe('float16');
        const bits = u16(raw.bytes);
        const full = await fp32.readFloat32(`model.${k}`);
        expect(fp32.info(`model.${k}`).dtype).toBe('float32');
        const rounded = Uint16Array.from(full, (x) => float32ToFloat16Bits(x));
        expect(bits).toEqual(rounded);
        // Upcast then round again is the identity: the upcast is exact.
        const up = await fp16.readFloat32(k);
        expect(Uint16Array.from(up, (x) => float32ToFloat16Bits(x))).toEqual(bits);
      }
      // lm_head is tied to embed_tokens in the fp32 OPTForCausalLM checkpoint.
      expect(await fp32.readFloat32('lm_head.weight')).toEqual(await fp32.readFloat32('model.decoder.embed_tokens.weight'));
    } finally {
      await fp16.close();
      await fp32.close();
    }
  });
});

describe('CLIP checkpoints', () => {
  it('the directory opens model.safetensors (preferred over pytorch_model.bin, as HF does)', async () => {
    await withSource(CLIP_DIR, async (s) => {
      expect(s.files().map((f) => basename(f))).toEqual(['model.safetensors']);
    });
  });

  it('model.safetensors equals pytorch_model.bin tensor by tensor (clip.safetensors_equals_bin)', async () => {
    const st = await openCheckpoint(fixture('openai', 'clip-vit-large-patch14', 'model.safetensors'));
    const pt = await openCheckpoint(fixture('openai', 'clip-vit-large-patch14', 'pytorch_model.bin'));
    try {
      expect(st.keys().sort()).toEqual(pt.keys().sort());
      expect(st.keys().length).toBe(64);
      for (const k of st.keys()) {
        const a = await st.readRaw(k);
        const b = await pt.readRaw(k);
        expect(a.dtype).toBe(b.dtype);
        expect(a.shape).toEqual(b.shape);
        expect(Buffer.from(a.bytes).equals(Buffer.from(b.bytes))).toBe(true);
      }
      expect(st.info('logit_scale').shape).toEqual([]);
      expect(st.info('vision_model.embeddings.position_ids')).toMatchObject({ dtype: 'int64', shape: [1, 17] });
      expect(Array.from(await st.readFloat32('vision_model.embeddings.position_ids'))).toEqual(Array.from({ length: 17 }, (_, i) => i));
    } finally {
      await st.close();
      await pt.close();
    }
  });
});

/** safetensors bytes for the given tensors (data in the given order). */
function safetensorsFile(tensors: Array<{ name: string; dtype: string; shape: readonly number[]; bytes: Uint8Array }>): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let at = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.bytes.length] };
    at += t.bytes.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + at);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 8);
  let p = 8 + json.length;
  for (const t of tensors) {
    out.set(t.bytes, p);
    p += t.bytes.length;
  }
  return out;
}

describe('sharded safetensors', () => {
  it('model.safetensors.index.json over two shards reads the same tensors as the single file', async () => {
    const single = await openCheckpoint(fixture('openai', 'clip-vit-large-patch14', 'model.safetensors'));
    const dir = await tempDir();
    try {
      const codes: Record<string, string> = { float32: 'F32', int64: 'I64' };
      const keys = single.keys();
      const shards = [keys.slice(0, 30), keys.slice(30)];
      const weightMap: Record<string, string> = {};
      for (let i = 0; i < 2; i++) {
        const name = `model-0000${i + 1}-of-00002.safetensors`;
        const tensors = [];
        for (const k of shards[i]) {
          const raw = await single.readRaw(k);
          tensors.push({ name: k, dtype: codes[raw.dtype], shape: raw.shape, bytes: raw.bytes });
          weightMap[k] = name;
        }
        await writeFile(join(dir, name), safetensorsFile(tensors));
      }
      await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
      // Also a pytorch_model.bin.index.json that must NOT be preferred.
      await writeFile(join(dir, 'pytorch_model.bin.index.json'), '{}');
      await withSource(dir, async (sharded) => {
        expect(sharded.files().map((f) => basename(f))).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
        expect(sharded.keys()).toEqual(keys);
        for (const k of keys) expect(Buffer.from((await sharded.readRaw(k)).bytes).equals(Buffer.from((await single.readRaw(k)).bytes))).toBe(true);
        expect(sharded.info(keys[40]).file).toBe(join(dir, 'model-00002-of-00002.safetensors'));
      });
    } finally {
      await single.close();
    }
  });
});

describe('FROMAGe checkpoints', () => {
  for (const variant of ['vis1', 'vis4'] as const) {
    it(`${variant}: the bf16 pretrained_ckpt.pth.tar == fp32 variant rounded to bf16; readFloat32 upcasts exactly`, async () => {
      const bfPath = variant === 'vis1' ? fixture('fromage_model') : fixture('fromage_model', 'fromage_vis4');
      const bf = await openCheckpoint(bfPath);
      const fp = await openCheckpoint(fixture('variants', 'fromage_fp32', variant, 'pretrained_ckpt.pth.tar'));
      try {
        expect(basename(bf.files()[0])).toBe('pretrained_ckpt.pth.tar');
        expect(bf.keys().sort()).toEqual(fp.keys().sort());
        expect(bf.has('model.visual_embeddings.weight')).toBe(true);
        expect(bf.info('ret_input_embeddings.weight').shape).toEqual([1, 64]);
        expect(bf.has('model.input_embeddings.weight')).toBe(false);
        for (const k of bf.keys()) {
          const raw = await bf.readRaw(k);
          expect(raw.dtype).toBe('bfloat16');
          const bits = u16(raw.bytes);
          const full = await fp.readFloat32(k);
          expect(bits).toEqual(Uint16Array.from(full, bf16Bits));
          const up = await bf.readFloat32(k);
          expect(new Uint32Array(up.buffer)).toEqual(Uint32Array.from(bits, (b) => b << 16));
        }
        expect(bf.info('model.visual_embeddings.weight').shape).toEqual([64 * (variant === 'vis1' ? 1 : 4), 48]);
      } finally {
        await bf.close();
        await fp.close();
      }
    });
  }
});

describe('openCheckpoint and provenance helpers', () => {
  it('a missing tensor is a CheckpointError naming the checkpoint', async () => {
    await withSource(OPT_DIR, async (s) => {
      expect(() => s.info('nope')).toThrow(CheckpointError);
      expect(() => s.info('nope')).toThrow(/pytorch_model\.bin\.index\.json.*'nope'/);
      await expect(s.readFloat32('nope')).rejects.toThrow(/'nope'/);
    });
  });

  it('reading after close() is a clear error; close() twice is fine', async () => {
    const s = await openCheckpoint(fixture('fromage_model'));
    await s.close();
    await s.close();
    await expect(s.readFloat32('model.logit_scale')).rejects.toThrow(/closed/);
  });

  it('sha256File streams and reports progress', async () => {
    const seen: number[] = [];
    const hex = await sha256File(fixture('facebook', 'opt-6.7b', 'config.json'), (done) => seen.push(done));
    expect(hex).toBe('9e0a5c83aa1c32af598c0153381155cf7984661d164f17bfcc8041be6112f928'); // sha256sum
    expect(seen[seen.length - 1]).toBe(655);
    await expect(sha256File(fixture('nope.bin'))).rejects.toThrow(/nope\.bin/);
  });
});
