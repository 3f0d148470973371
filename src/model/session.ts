/**
 * onnxruntime sessions for the bundle's graphs, created from file paths (external weight data
 * lives next to each graph). CPU by default; `cuda` is tried when asked and falls back to CPU
 * with a warning when the CUDA provider is not installed.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { resolveThreads } from './threads.ts';

export type Device = 'cpu' | 'cuda';

export interface SessionOptions {
  readonly device?: Device;
  /**
   * Intra-op threads. 0 or undefined: the CPUs this process may use (src/model/threads.ts);
   * 'onnxruntime-default' leaves the choice to onnxruntime (benchmarks compare against it).
   */
  readonly threads?: number | 'onnxruntime-default';
  /** Receives the CUDA fallback warning (default: console.warn). */
  readonly warn?: (message: string) => void;
  /** onnxruntime session config entries (e.g. `session.disable_prepacking`), merged over the defaults. */
  readonly configEntries?: Readonly<Record<string, string>>;
  /** Graph optimization level (default 'all'); a graph saved already optimized loads with 'disabled'. */
  readonly optimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all';
  /** Writes the optimized graph here (with its weights, prepacked ones included, in `<file>.data`). */
  readonly optimizedModelFile?: string;
  /** openBundle: false loads the bundle's decoder even when this CPU has a prepared copy (src/model/prepared-decoder.ts). */
  readonly preparedDecoder?: boolean;
}

export interface CreatedSession {
  readonly session: ort.InferenceSession;
  readonly device: Device;
}

/** Where the README says how to install the CUDA provider. */
const GPU_STEPS = "the README's GPU section: `ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node` (downloads the provider), or build ops/Dockerfile.cuda";

/** The provider libraries onnxruntime-node loads for CUDA; its npm package ships without them. */
const CUDA_LIBS = ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so'];

/** Missing CUDA provider libraries in onnxruntime-node's native folder (empty when present or not Linux x64). */
export function missingCudaLibraries(binDir?: string): string[] {
  if (binDir === undefined) {
    if (process.platform !== 'linux' || process.arch !== 'x64') return [];
    const pkg = createRequire(import.meta.url).resolve('onnxruntime-node/package.json');
    binDir = join(dirname(pkg), 'bin', 'napi-v6', process.platform, process.arch);
  }
  return CUDA_LIBS.filter((f) => !existsSync(join(binDir, f)));
}

export function sessionOptions(options: SessionOptions): ort.InferenceSession.SessionOptions {
  const threads = options.threads === 'onnxruntime-default' ? undefined : resolveThreads(options.threads).threads;
  return {
    graphOptimizationLevel: options.optimizationLevel ?? 'all',
    // An explicit count also leaves the threads unpinned (onnxruntime pins its default pool).
    ...(threads ? { intraOpNumThreads: threads, interOpNumThreads: 1 } : {}),
    ...(options.optimizedModelFile ? { optimizedModelFilePath: options.optimizedModelFile } : {}),
    ...(options.configEntries ? { extra: { ...options.configEntries } } : {}),
  };
}

export async function createSession(path: string, options: SessionOptions = {}): Promise<CreatedSession> {
  const base = sessionOptions(options);
  const warn = options.warn ?? console.warn;
  if (options.device === 'cuda') {
    // Asking onnxruntime for a provider whose libraries are absent prints a red native
    // "Failed to load library" line that reads like a crash: check the files first.
    const missing = missingCudaLibraries();
    if (missing.length > 0) {
      warn(`FROMAGE_DEVICE=cuda but onnxruntime-node's CUDA provider is not installed (${missing.join(', ')} missing); running on CPU. To use the GPU, see ${GPU_STEPS}`);
    } else {
      try {
        const session = await ort.InferenceSession.create(path, { ...base, executionProviders: ['cuda'] });
        return { session, device: 'cuda' };
      } catch (err) {
        warn(
          `FROMAGE_DEVICE=cuda but the CUDA execution provider could not be used (${(err as Error).message.split('\n')[0]}); running on CPU. The provider needs the CUDA 12 runtime, cuDNN 9 and an NVIDIA driver: see ${GPU_STEPS}`,
        );
      }
    }
  }
  const session = await ort.InferenceSession.create(path, { ...base, executionProviders: ['cpu'] });
  return { session, device: 'cpu' };
}
