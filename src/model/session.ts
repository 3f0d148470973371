/**
 * onnxruntime sessions for the bundle's graphs, created from file paths (external weight data
 * lives next to each graph). CPU by default; `cuda` is tried when asked and falls back to CPU
 * with a warning when the CUDA provider is not installed.
 */
import * as ort from 'onnxruntime-node';

export type Device = 'cpu' | 'cuda';

export interface SessionOptions {
  readonly device?: Device;
  /** Intra-op threads; 0 or undefined lets onnxruntime decide. */
  readonly threads?: number;
  /** Receives the CUDA fallback warning (default: console.warn). */
  readonly warn?: (message: string) => void;
}

export interface CreatedSession {
  readonly session: ort.InferenceSession;
  readonly device: Device;
}

export async function createSession(path: string, options: SessionOptions = {}): Promise<CreatedSession> {
  const base: ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: 'all',
    ...(options.threads ? { intraOpNumThreads: options.threads, interOpNumThreads: 1 } : {}),
  };
  if (options.device === 'cuda') {
    try {
      const session = await ort.InferenceSession.create(path, { ...base, executionProviders: ['cuda'] });
      return { session, device: 'cuda' };
    } catch (err) {
      (options.warn ?? console.warn)(
        `FROMAGE_DEVICE=cuda but the CUDA execution provider could not be used (${(err as Error).message.split('\n')[0]}); running on CPU`,
      );
    }
  }
  const session = await ort.InferenceSession.create(path, { ...base, executionProviders: ['cpu'] });
  return { session, device: 'cpu' };
}
