/**
 * From the configuration (FROMAGE_KV_CACHE_MB, FROMAGE_KV_DISK_MB, FROMAGE_KV_CODEC,
 * FROMAGE_DATA_DIR) and the loaded bundle to the prefix store's options, with the line the
 * start log prints. The memory default is computed here, at start, from the memory this process
 * may use (the machine's, or its cgroup's limit when lower) minus the model's weights.
 *
 * FROMAGE_KV_CACHE_MB (> 0) bounds all KV memory beyond the model: the live caches of the
 * answers being written first, kept caches in what is left (kv-memory.ts). 0 turns reuse off and
 * leaves live caches bounded only by FROMAGE_BATCH and the context.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import { UserFacingError } from '../conversation/errors.ts';
import type { Manifest } from '../model/manifest.ts';
import { encodedBytes, type KvCodecName } from './kv-codec.ts';
import { oneJobLiveBytes, positionBytes } from './kv-memory.ts';
import type { KvShape } from './kv-types.ts';
import type { KvStoreOptions } from './prefix-store.ts';

const MIB = 1024 * 1024;

/**
 * Share of (usable memory - model weights) KV caches, live and kept, get by default. Half: on the
 * OPT-6.7B shape (1 MiB per position in float32) a 24 GiB machine with 4.3 GB of int4 weights
 * gets about 10 GiB, which holds FROMAGE_BATCH=4 rows of up to 2000 positions (8 GiB) while the
 * fourth one's prompt cache (2 GiB) is joining them; the other half is left to onnxruntime's
 * working memory, the process and the system. A quarter (5 GiB) would let only one answer near
 * full context run at a time there.
 */
export const DEFAULT_KV_MEMORY_SHARE = 0.5;
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

/** The default memory budget: half of what is left beside the weights, at most 16 GiB, whole MiB. */
export function defaultKvCacheBytes(usableBytes: number, weightBytes = 0): number {
  const share = Math.max(0, usableBytes - weightBytes) * DEFAULT_KV_MEMORY_SHARE;
  return Math.floor(Math.min(share, DEFAULT_KV_MEMORY_CAP_MB * MIB) / MIB) * MIB;
}

function mib(bytes: number): string {
  return `${Math.round(bytes / MIB)} MiB`;
}

/**
 * The least budget that works: one conversation at full context must be able to answer alone
 * (its prompt's cache and its batch row, float32, live) and then be kept (in its codec).
 */
export function minimumKvCacheBytes(bundle: KvBundleInfo, codec: KvCodecName): number {
  const kept = encodedBytes(bundle.shape, bundle.maxPositions, codec) + bundle.maxPositions * 8 + 256;
  return Math.max(kept, oneJobLiveBytes(bundle.shape, bundle.maxPositions));
}

/**
 * FROMAGE_KV_CACHE_MB bounds what the caches add to the process's memory, and freed cache
 * buffers stay on the allocators' free lists for a while, so kept caches leave part of the budget
 * free (live ones may use it): 3%, at least 64 MiB (or an eighth of a smaller budget), since free
 * lists hold tens of MiB whatever the budget. Measured with bench:serve d, kept caches filling
 * the whole budget: at the OPT-6.7B shape RSS peaked up to 64 MiB (1.6% of 4128) above the bytes
 * counted; at 125M up to 32 MiB (6.3% of 512).
 */
export const KV_HEADROOM_SHARE = 0.03;
export const KV_HEADROOM_MIN_BYTES = 64 * MIB;

/** The bytes kept caches leave free of `budgetBytes`. */
export function kvHeadroomBytes(budgetBytes: number): number {
  // The floor takes at most an eighth, so a small budget (a tiny model's) still keeps caches.
  return Math.max(Math.floor(budgetBytes * KV_HEADROOM_SHARE), Math.min(KV_HEADROOM_MIN_BYTES, Math.floor(budgetBytes / 8)));
}

/**
 * The store's options and the start-log line. An explicit FROMAGE_KV_CACHE_MB too small for one
 * conversation answering at full context is refused (KvBudgetError); a default that small turns
 * reuse off (and live caches are then unbounded, as with 0).
 */
export function kvStoreSetup(config: KvConfig, bundle: KvBundleInfo, usableBytes: number = usableMemoryBytes()): { options: KvStoreOptions; description: string } {
  const codec = config.FROMAGE_KV_CODEC;
  const explicit = config.FROMAGE_KV_CACHE_MB !== undefined;
  let budgetBytes = explicit ? (config.FROMAGE_KV_CACHE_MB ?? 0) * MIB : defaultKvCacheBytes(usableBytes, bundle.weightBytes);
  let off = budgetBytes === 0 ? 'FROMAGE_KV_CACHE_MB=0' : '';
  const rowMib = Math.ceil((bundle.maxPositions * positionBytes(bundle.shape)) / MIB);
  if (budgetBytes > 0 && budgetBytes < minimumKvCacheBytes(bundle, codec)) {
    const need = Math.ceil(minimumKvCacheBytes(bundle, codec) / MIB);
    if (explicit) {
      throw new KvBudgetError(
        `FROMAGE_KV_CACHE_MB=${config.FROMAGE_KV_CACHE_MB} cannot hold the KV memory of one conversation at full context: ` +
          `FROMAGE_KV_CACHE_MB bounds live and kept caches together, and while an answer is written its prompt's cache and its batch row ` +
          `(${bundle.maxPositions} positions each, float32, ${rowMib} MiB each for this model) take ${need} MiB: set it to at least ${need}, ` +
          `or set it to 0 to turn prefix reuse off (live caches are then bounded only by FROMAGE_BATCH and the context)`,
      );
    }
    off = `the default budget (${mib(budgetBytes)}, half the memory beside the model) is below what one conversation at full context needs while it answers (${need} MiB); set FROMAGE_KV_CACHE_MB to turn it on`;
    budgetBytes = 0;
  }
  const dir = join(config.FROMAGE_DATA_DIR, 'kv');
  const diskBytes = budgetBytes > 0 ? config.FROMAGE_KV_DISK_MB * MIB : 0;
  const options: KvStoreOptions = {
    budgetBytes,
    codec,
    headroomBytes: budgetBytes > 0 ? kvHeadroomBytes(budgetBytes) : 0,
    spill: diskBytes > 0 ? { dir, budgetBytes: diskBytes, bundleId: bundle.id } : undefined,
  };
  if (budgetBytes === 0) {
    return {
      options,
      description: `kept KV caches: off (${off}); every turn prefills its whole prompt; live KV caches are bounded only by FROMAGE_BATCH and the context (${rowMib} MiB per row at ${bundle.maxPositions} positions)`,
    };
  }
  const headroom = kvHeadroomBytes(budgetBytes);
  const positions = Math.floor((budgetBytes - headroom) / encodedBytes(bundle.shape, 1, codec));
  const live = Math.floor(budgetBytes / positionBytes(bundle.shape));
  const disk = diskBytes > 0 ? `${mib(diskBytes)} on disk at ${dir}` : 'no disk spill (FROMAGE_KV_DISK_MB=0)';
  return {
    options,
    description:
      `KV caches: up to ${mib(budgetBytes)} in memory${explicit ? '' : ' (default)'} for live and kept caches together: ` +
      `answers being written first (float32, about ${live} positions across the batch; more wait for memory), ` +
      `kept caches in what is left less ${mib(headroom)} for the allocators (${codec}, about ${positions} positions when none is live), ${disk}`,
  };
}
