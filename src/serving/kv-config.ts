/**
 * From the configuration (FROMAGE_KV_CACHE_MB, FROMAGE_KV_DISK_MB, FROMAGE_KV_CODEC,
 * FROMAGE_DATA_DIR) and the loaded bundle to the prefix store's options, with the line the
 * start log prints. The memory default is computed here, at start, from the memory this process
 * may use (the machine's, or its cgroup's limit when lower) minus the model's weights.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import { UserFacingError } from '../conversation/errors.ts';
import type { Manifest } from '../model/manifest.ts';
import { encodedBytes, type KvCodecName } from './kv-codec.ts';
import type { KvShape } from './kv-types.ts';
import type { KvStoreOptions } from './prefix-store.ts';

const MIB = 1024 * 1024;

/** Share of (usable memory - model weights) kept caches get by default. */
export const DEFAULT_KV_MEMORY_SHARE = 0.25;
/** Upper bound of the default: beyond it, more kept conversations buy little. */
export const DEFAULT_KV_MEMORY_CAP_MB = 16 * 1024;
export const DEFAULT_KV_DISK_MB = 4096;

export class KvBudgetError extends UserFacingError {}

export interface KvConfig {
  /** Unset: the default computed at start. 0: reuse off. */
  readonly FROMAGE_KV_CACHE_MB?: number;
  /** 0: no spill. */
  readonly FROMAGE_KV_DISK_MB: number;
  readonly FROMAGE_KV_CODEC: KvCodecName;
  readonly FROMAGE_DATA_DIR: string;
}

export interface KvBundleInfo {
  /** The manifest id: spill files are checked against it. */
  readonly id: string;
  readonly shape: KvShape;
  /** The decoder's positions: the budget must hold one conversation at full context. */
  readonly maxPositions: number;
  /** The model's weight bytes, which the memory default leaves out. */
  readonly weightBytes?: number;
}

/** What kvStoreSetup needs from a bundle: its id and cache shape from the manifest, its weights' size from the files. */
export function kvBundleInfo(manifest: Manifest, bundleDir: string): KvBundleInfo {
  const m = manifest.model;
  let weightBytes = 0;
  try {
    for (const name of readdirSync(bundleDir)) if (/\.(onnx|data)$/.test(name)) weightBytes += statSync(join(bundleDir, name)).size;
  } catch {
    // an unreadable directory fails at load with a better message; the default just counts 0
  }
  return { id: manifest.id, shape: { layers: m.num_layers, heads: m.num_heads, headDim: m.head_dim }, maxPositions: m.max_positions, weightBytes };
}

/** Bytes this process may use: the machine's memory, or the cgroup limit when it is lower. */
export function usableMemoryBytes(): number {
  let total = totalmem();
  for (const file of ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes']) {
    try {
      const limit = Number(readFileSync(file, 'utf8').trim());
      if (Number.isFinite(limit) && limit > 0) total = Math.min(total, limit);
    } catch {
      // not under that cgroup layout
    }
  }
  return total;
}

/** The default memory budget: a quarter of what is left beside the weights, at most 16 GiB, whole MiB. */
export function defaultKvCacheBytes(usableBytes: number, weightBytes = 0): number {
  const share = Math.max(0, usableBytes - weightBytes) * DEFAULT_KV_MEMORY_SHARE;
  return Math.floor(Math.min(share, DEFAULT_KV_MEMORY_CAP_MB * MIB) / MIB) * MIB;
}

function mib(bytes: number): string {
  return `${Math.round(bytes / MIB)} MiB`;
}

/**
 * The store's options and the start-log line. An explicit FROMAGE_KV_CACHE_MB too small for one
 * conversation at full context is refused (KvBudgetError); a default that small turns reuse off.
 */
export function kvStoreSetup(config: KvConfig, bundle: KvBundleInfo, usableBytes: number = usableMemoryBytes()): { options: KvStoreOptions; description: string } {
  const codec = config.FROMAGE_KV_CODEC;
  const fullContext = encodedBytes(bundle.shape, bundle.maxPositions, codec) + bundle.maxPositions * 8 + 256;
  const explicit = config.FROMAGE_KV_CACHE_MB !== undefined;
  let budgetBytes = explicit ? (config.FROMAGE_KV_CACHE_MB ?? 0) * MIB : defaultKvCacheBytes(usableBytes, bundle.weightBytes);
  let off = budgetBytes === 0 ? 'FROMAGE_KV_CACHE_MB=0' : '';
  if (budgetBytes > 0 && budgetBytes < fullContext) {
    const need = Math.ceil(fullContext / MIB);
    if (explicit) {
      throw new KvBudgetError(
        `FROMAGE_KV_CACHE_MB=${config.FROMAGE_KV_CACHE_MB} cannot hold one conversation's KV cache at full context ` +
          `(${bundle.maxPositions} positions stored as ${codec} take ${need} MiB for this model): set it to at least ${need}, ` +
          `store them smaller with FROMAGE_KV_CODEC=fp16 or int8, or set it to 0 to turn prefix reuse off`,
      );
    }
    off = `the default budget (${mib(budgetBytes)}, a quarter of the memory beside the model) is below one conversation at full context (${need} MiB as ${codec}); set FROMAGE_KV_CACHE_MB${codec === 'fp32' ? ', or FROMAGE_KV_CODEC=fp16 to store them in half the memory,' : ''} to turn it on`;
    budgetBytes = 0;
  }
  const dir = join(config.FROMAGE_DATA_DIR, 'kv');
  const diskBytes = budgetBytes > 0 ? config.FROMAGE_KV_DISK_MB * MIB : 0;
  const options: KvStoreOptions = {
    budgetBytes,
    codec,
    spill: diskBytes > 0 ? { dir, budgetBytes: diskBytes, bundleId: bundle.id } : undefined,
  };
  if (budgetBytes === 0) return { options, description: `kept KV caches: off (${off}); every turn prefills its whole prompt` };
  const positions = Math.floor(budgetBytes / encodedBytes(bundle.shape, 1, codec));
  const disk = diskBytes > 0 ? `${mib(diskBytes)} on disk at ${dir}` : 'no disk spill (FROMAGE_KV_DISK_MB=0)';
  return {
    options,
    description: `kept KV caches: up to ${mib(budgetBytes)} in memory (${codec}, about ${positions} positions${explicit ? '' : ', default'}), ${disk}`,
  };
}
