import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Manifest } from '../../src/model/manifest.ts';
import { defaultKvCacheBytes, KvBudgetError, kvBundleInfo, kvStoreSetup } from '../../src/serving/kv-config.ts';

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

  it('defaults to a quarter of the memory beside the weights, at most 16 GiB', () => {
    expect(defaultKvCacheBytes(24 * GIB, 6 * GIB)).toBe(4.5 * GIB);
    expect(defaultKvCacheBytes(512 * GIB, 0)).toBe(16 * GIB);
    expect(defaultKvCacheBytes(4 * GIB, 6 * GIB)).toBe(0);
  });

  it('describes the default for the start log', () => {
    const { options, description } = kvStoreSetup(loadConfig({}), OPT, 24 * GIB);
    expect(options).toMatchObject({ budgetBytes: 4.5 * GIB, codec: 'fp32', spill: { dir: 'data/kv', budgetBytes: 4 * GIB, bundleId: 'bundle-6.7b' } });
    expect(description).toBe('kept KV caches: up to 4608 MiB in memory (fp32, about 4608 positions, default), 4096 MiB on disk at data/kv');
  });

  it('0 turns reuse (and the spill) off; disk 0 turns only the spill off', () => {
    const off = kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '0' }), OPT, 24 * GIB);
    expect(off.options).toMatchObject({ budgetBytes: 0, spill: undefined });
    expect(off.description).toMatch(/off \(FROMAGE_KV_CACHE_MB=0\)/);
    const noDisk = kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '3072', FROMAGE_KV_DISK_MB: '0' }), OPT, 24 * GIB);
    expect(noDisk.options).toMatchObject({ budgetBytes: 3 * GIB, spill: undefined });
    expect(noDisk.description).toMatch(/no disk spill/);
  });

  it('refuses an explicit budget too small for one conversation, saying what to set', () => {
    expect(() => kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '600' }), OPT, 24 * GIB)).toThrow(KvBudgetError);
    expect(() => kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '600' }), OPT, 24 * GIB)).toThrow(
      /FROMAGE_KV_CACHE_MB=600 cannot hold .*\(2048 positions stored as fp32 take 2049 MiB .* at least 2049.* or set it to 0/,
    );
    // int8 takes about a quarter: the same budget then fits.
    expect(kvStoreSetup(loadConfig({ FROMAGE_KV_CACHE_MB: '600', FROMAGE_KV_CODEC: 'int8' }), OPT, 24 * GIB).options.budgetBytes).toBe(600 * MIB);
  });

  it('a default too small for one conversation turns reuse off instead of failing', () => {
    const { options, description } = kvStoreSetup(loadConfig({}), OPT, 12 * GIB);
    expect(options.budgetBytes).toBe(0);
    expect(description).toMatch(/off \(the default budget \(1536 MiB.*2049 MiB as fp32\); set FROMAGE_KV_CACHE_MB, or FROMAGE_KV_CODEC=fp16/);
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
