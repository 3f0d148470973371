/** Messages between FromageEngine (main thread) and its model worker thread. */
import type { LoadMode } from './preprocess.ts';
import type { Device } from './session.ts';
import type { FromageSettings } from './fromage.ts';
import type { KvCodecName } from '../serving/kv-codec.ts';
import type { BatcherStats } from '../serving/batcher.ts';
import type { KvStoreStats } from '../serving/kv-types.ts';

export interface WorkerInit {
  readonly bundleDir: string;
  readonly device?: Device;
  readonly threads?: number;
  readonly visualCacheSize?: number;
  readonly maxImagePixels?: number;
  /** Retrieval index directories; none = [RET] resolves to no images. */
  readonly indexDirs: readonly string[];
  readonly fetch: boolean;
  readonly fetchAllow?: readonly string[];
  readonly imageCacheDir?: string;
  /** Answers decoded together in one batch (FROMAGE_BATCH); default 1. */
  readonly batch?: number;
  /** Memory for live and kept KV caches in MiB (FROMAGE_KV_CACHE_MB): undefined = the default from the machine's memory, 0 = no reuse. */
  readonly kvCacheMb?: number;
  /** Disk for spilled KV caches in MiB (FROMAGE_KV_DISK_MB); no spill without kvDir. */
  readonly kvDiskMb?: number;
  readonly kvCodec?: KvCodecName;
  /** Where spilled KV caches live (`<FROMAGE_DATA_DIR>/kv`). */
  readonly kvDir?: string;
  /** false: load the bundle's decoder even when this CPU has a prepared copy (benchmarks compare both). */
  readonly preparedDecoder?: boolean;
}

export interface WorkerInfo {
  readonly bundleId: string;
  readonly contextLength: number;
  readonly nVisualTokens: number;
  readonly hasIndex: boolean;
  readonly device: Device;
}

export type JobItem = { readonly type: 'text'; readonly text: string } | { readonly type: 'image'; readonly data: Uint8Array; readonly hash: string; readonly load?: LoadMode };

export type ChatJobSettings = Pick<FromageSettings, 'numWords' | 'retScaleFactor' | 'maxNumRets' | 'maxImgPerRet' | 'temperature' | 'topP' | 'seed'>;

export type JobRequest =
  | { readonly kind: 'chat'; readonly items: readonly JobItem[]; readonly settings: ChatJobSettings; readonly stream: boolean }
  | { readonly kind: 'retrieve'; readonly query: string; readonly count: number }
  | { readonly kind: 'logLikelihood'; readonly items: readonly JobItem[] };

export interface WireImage {
  readonly data: Uint8Array;
  readonly contentType: string;
  readonly row: number;
  /** The row in its own index, when several are loaded. */
  readonly indexRow?: number;
  readonly url: string;
  readonly score: number;
  readonly width?: number;
  readonly height?: number;
}

export type WireSegment = { readonly type: 'text'; readonly text: string } | { readonly type: 'images'; readonly images: readonly WireImage[] };

export type JobResult =
  | { readonly kind: 'chat'; readonly segments: readonly WireSegment[]; readonly generatedTokens: number; readonly historyText: string }
  | { readonly kind: 'retrieve'; readonly images: readonly WireImage[] }
  | { readonly kind: 'logLikelihood'; readonly value: number };

export interface WireError {
  readonly name: string;
  readonly message: string;
  readonly reason?: string;
}

/** Counters for /metrics: batch occupancy, and reuse when kept caches are on. */
export interface ServingStats {
  readonly batch: BatcherStats;
  readonly kv?: KvStoreStats;
}

export type ToWorker =
  | { readonly type: 'job'; readonly id: number; readonly job: JobRequest }
  | { readonly type: 'stats'; readonly id: number }
  | { readonly type: 'cancel'; readonly id: number }
  /** Abort everything and exit once no graph call is running (terminating mid-call would abort the process). */
  | { readonly type: 'shutdown' };

export type FromWorker =
  | { readonly type: 'ready'; readonly info: WorkerInfo }
  | { readonly type: 'log'; readonly level: 'warn' | 'info'; readonly message: string }
  | { readonly type: 'init-error'; readonly error: WireError }
  | { readonly type: 'text'; readonly id: number; readonly text: string }
  | { readonly type: 'result'; readonly id: number; readonly result: JobResult }
  | { readonly type: 'stats'; readonly id: number; readonly stats: ServingStats }
  | { readonly type: 'error'; readonly id: number; readonly error: WireError };
