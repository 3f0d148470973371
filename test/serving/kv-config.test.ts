import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Manifest } from '../../src/model/manifest.ts';
import { defaultKvCacheBytes, KvBudgetError, kvBundleInfo, kvHeadroomBytes, kvStoreSetup, minimumKvCacheBytes } from '../../src/serving/kv-config.ts';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;
// OPT-6.7B: fp32 keeps 1 MiB per position (2 GiB for the full 2048-position context), fp16 half.
const OPT = { id: 'bundle-6.7b', shape: { layers: 32, heads: 32, headDim: 128 }, maxPositions: 2048, weightBytes: 6 * GIB };

describe('kept-cache configuration', () => {
  it('reads the variables (unset memory budget = computed at start)', () => {
    const c = loadConfig({});
    expect(c.FROMAGE_KV_CACHE_MB).toBeUndefined();
    expect(c.FROMAGE_KV_DISK_MB).toBe(4096);
    expect(c.FROMAGE_KV_CODEC).toBe('fp32');
    expect(loadConfig({ FROMAGE_KV_CACHE_MB: '0', FROMAGE_KV_CODEC: 'fp16' })).toMatchObject({ FROMAGE_KV_CACHE_MB: 0, FROMAGE_KV_CODEC: 'fp16' });
    expect(() => loadConfig({ FROMAGE_KV_CODEC: 'fp8' })).toThrow(/FROMAGE_KV_CODEC.*fp32 \(default, exact\), fp16 or int8/);
    expect(() => loadConfig({ FROMAGE_KV_DISK_MB: '-1' })).toThrow(/FROMAGE_KV_DISK_MB/);
  });

  it('kept caches leave 3% of the budget, at least 64 MiB (an eighth of a smaller budget), to the allocators', () => {
    expect(kvHeadroomBytes(4128 * MIB)).toBe(Math.floor(0.03 * 4128 * MIB));
    expect(kvHeadroomBytes(512 * MIB)).toBe(64 * MIB);
    expect(kvHeadroomBytes(64 * MIB)).toBe(8 * MIB);
    expect(kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '0' }), OPT, 24 * GIB).options.headroomBytes).toBe(0);
  });

  it('defaults to half the memory beside the weights, at most 16 GiB', () => {
    expect(defaultKvCacheBytes(24 * GIB, 6 * GIB)).toBe(9 * GIB);
    expect(defaultKvCacheBytes(24 * GIB, 4 * GIB)).toBe(10 * GIB);
    expect(defaultKvCacheBytes(512 * GIB, 0)).toBe(16 * GIB);
    expect(defaultKvCacheBytes(4 * GIB, 6 * GIB)).toBe(0);
  });

  it('describes the default for the start log', () => {
    const { options, description } = kvStoreSetup(loadConfig({}), OPT, 24 * GIB);
    expect(options).toMatchObject({ budgetBytes: 9 * GIB, codec: 'fp32', headroomBytes: Math.floor(0.03 * 9 * GIB), spill: { dir: 'data/kv', budgetBytes: 4 * GIB, bundleId: 'bundle-6.7b' } });
    expect(description).toBe(
      'KV caches: up to 9216 MiB in memory (default) for live and kept caches together: answers being written first (float32, about 9216 positions across the batch; ' +
        'more wait for memory), kept caches in what is left less 276 MiB for the allocators (fp32, about 8939 positions when none is live), 4096 MiB on disk at data/kv',
    );
  });

  it('0 turns reuse (and the spill) off; disk 0 turns only the spill off', () => {
    const off = kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '0' }), OPT, 24 * GIB);
    expect(off.options).toMatchObject({ budgetBytes: 0, spill: undefined });
    expect(off.description).toMatch(/off \(FROMAGE_KV_CACHE_MB=0\).*live KV caches are bounded only by FROMAGE_BATCH and the context \(2048 MiB per row at 2048 positions\)/);
    const noDisk = kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '6144', FROMAGE_KV_DISK_MB: '0' }), OPT, 24 * GIB);
    expect(noDisk.options).toMatchObject({ budgetBytes: 6 * GIB, spill: undefined });
    expect(noDisk.description).toMatch(/no disk spill/);
  });

  it('refuses an explicit budget too small for one conversation answering at full context (live caches count), saying what to set', () => {
    // One answer alone: its prompt's cache (2048 MiB) and its batch row (2048 MiB, plus one layer while the pool resizes).
    expect(minimumKvCacheBytes(OPT, 'fp32')).toBe((2 * 2048 + 32) * MIB);
    expect(() => kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '3000' }), OPT, 24 * GIB)).toThrow(KvBudgetError);
    expect(() => kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '3000' }), OPT, 24 * GIB)).toThrow(
      /FROMAGE_KV_CACHE_MB=3000 cannot hold the KV memory of one conversation at full context: .*live and kept caches together.*\(2048 positions each, float32, 2048 MiB each for this model\) take 4128 MiB: set it to at least 4128, or set it to 0 .*bounded only by FROMAGE_BATCH and the context/,
    );
    // Live caches are float32 whatever the codec: int8 no longer makes a smaller budget enough.
    expect(() => kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '600', FROMAGE_KV_CODEC: 'int8' }), OPT, 24 * GIB)).toThrow(KvBudgetError);
    expect(kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '4128' }), OPT, 24 * GIB).options.budgetBytes).toBe(4128 * MIB);
  });

  it('a default too small for one conversation turns reuse off instead of failing', () => {
    const { options, description } = kvStoreSetup(loadConfig({}), OPT, 12 * GIB);
    expect(options.budgetBytes).toBe(0);
    expect(description).toMatch(/off \(the default budget \(3072 MiB, half the memory beside the model\) is below .* \(4128 MiB\); set FROMAGE_KV_CACHE_MB to turn it on\)/);
  });

  it('takes the bundle id and shape from the manifest and the weights size from its files', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'fromage-kvinfo-'));
    try {
      await writeFile(join(dir, 'decoder.onnx'), Buffer.alloc(100));
      await writeFile(join(dir, 'decoder.onnx.data'), Buffer.alloc(1000));
      await writeFile(join(dir, 'tokenizer.json'), '{}');
      const manifest = { id: 'abc12345', model: { num_layers: 2, num_heads: 4, head_dim: 8, max_positions: 64 } } as unknown as Manifest;
      expect(kvBundleInfo(manifest, dir)).toEqual({ id: 'abc12345', shape: { layers: 2, heads: 4, headDim: 8 }, maxPositions: 64, weightBytes: 1100 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
