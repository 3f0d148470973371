import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assignShards, optTensorSpecs, OPT_SHAPES, writeSyntheticOptCheckpoint } from '../../../bench/convert-synthetic.ts';
import { openCheckpoint } from '../../../src/convert/readers/index.ts';
import { writeTorchZipCheckpoint } from '../../../src/convert/readers/torch-zip-writer.ts';
import { tempDir } from './helpers.ts';

describe('torch zip writer round trip (reader paths real checkpoints rarely hit)', () => {
  for (const forceZip64 of [false, true]) {
    it(`dtypes, a transposed (non-contiguous) view and a scalar${forceZip64 ? ', with ZIP64 records' : ''}`, async () => {
      const path = join(await tempDir(), 'ckpt.bin');
      const storage = Float32Array.from({ length: 12 }, (_, i) => i);
      await writeTorchZipCheckpoint(
        path,
        [
          { name: 'w', dtype: 'float32', shape: [3, 4] },
          { name: 'wT', dtype: 'float32', shape: [4, 3], stride: [1, 4] },
          { name: 'ids', dtype: 'int64', shape: [1, 3] },
          { name: 'scale', dtype: 'bfloat16', shape: [] },
        ],
        (spec) => {
          if (spec.dtype === 'int64') return [new Uint8Array(BigInt64Array.of(5n, 6n, 7n).buffer)];
          if (spec.dtype === 'bfloat16') return [Uint8Array.of(0x80, 0x3f)]; // 1.0
          return [new Uint8Array(storage.buffer)];
        },
        { folder: 'ckpt', forceZip64 },
      );
      const s = await openCheckpoint(path);
      try {
        expect(s.keys()).toEqual(['w', 'wT', 'ids', 'scale']);
        expect(Array.from(await s.readFloat32('w'))).toEqual(Array.from(storage));
        // wT[i][j] = w[j][i]
        expect(Array.from(await s.readFloat32('wT'))).toEqual([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        expect((await s.readRaw('wT')).bytes.length).toBe(48);
        expect(Array.from(await s.readFloat32('ids'))).toEqual([5, 6, 7]);
        expect(Array.from(await s.readFloat32('scale'))).toEqual([1]);
      } finally {
        await s.close();
      }
    });
  }
});

describe('synthetic OPT checkpoint (bench:convert input)', () => {
  it('has facebook/opt-*’s key layout and HF-style greedy shards', () => {
    const specs = optTensorSpecs(OPT_SHAPES['opt-6.7b']);
    expect(specs).toHaveLength(4 + 32 * 16);
    const bytes = specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1) * 2, 0);
    expect(bytes / 1e9).toBeCloseTo(13.3, 1); // OPT-6.7B in fp16
    const shards = assignShards(specs, OPT_SHAPES['opt-6.7b'].maxShardBytes);
    expect(shards).toHaveLength(2); // like the hub's 2 shards
  });

  it('writes a tiny sharded checkpoint that reads back like the fixture layout', async () => {
    const dir = await tempDir();
    let last = 0;
    const ck = await writeSyntheticOptCheckpoint({ dir, shape: 'tiny', onProgress: (d) => (last = d) });
    expect(last).toBe(ck.totalBytes);
    expect(ck.shards.length).toBeGreaterThan(1);
    const config = JSON.parse(await readFile(ck.configFile, 'utf8')) as Record<string, unknown>;
    expect(config).toMatchObject({ hidden_size: 64, num_hidden_layers: 2, ffn_dim: 256, vocab_size: 300, torch_dtype: 'float16' });
    const index = JSON.parse(await readFile(ck.indexFile, 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    expect(index.metadata.total_size).toBe(ck.totalBytes);
    const s = await openCheckpoint(dir);
    try {
      expect(s.keys()).toHaveLength(ck.tensorCount);
      expect(Object.keys(index.weight_map).sort()).toEqual([...s.keys()].sort());
      const w = await s.readFloat32('decoder.layers.1.fc1.weight');
      expect(s.info('decoder.layers.1.fc1.weight')).toMatchObject({ dtype: 'float16', shape: [256, 64] });
      const mean = w.reduce((a, b) => a + b, 0) / w.length;
      const std = Math.sqrt(w.reduce((a, b) => a + (b - mean) ** 2, 0) / w.length);
      expect(Math.abs(mean)).toBeLessThan(0.002);
      expect(std).toBeGreaterThan(0.015);
      expect(std).toBeLessThan(0.025);
      const ln = await s.readFloat32('decoder.final_layer_norm.weight');
      expect(ln.every((x) => x > 0.7 && x < 1.3)).toBe(true);
      // Distinct tensors get distinct values.
      const a = await s.readRaw('decoder.layers.0.self_attn.q_proj.weight');
      const b = await s.readRaw('decoder.layers.0.self_attn.k_proj.weight');
      expect(Buffer.from(a.bytes).equals(Buffer.from(b.bytes))).toBe(false);
    } finally {
      await s.close();
    }
  });
});
