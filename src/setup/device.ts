/**
 * Whether onnxruntime-node can run on CUDA here, and if not, why and how to fix it. The
 * runtime uses this to fall back to CPU with a warning instead of failing at the first request.
 *
 * onnxruntime-node bundles only the CPU provider; the CUDA provider libraries are an opt-in
 * download of its install script (Linux x64 only), and they need the CUDA 12 and cuDNN 9
 * runtime libraries on the machine. Each of those is checked in turn.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { encodeModel } from '../convert/onnx/onnx-proto.ts';

export interface CudaProviderStatus {
  usable: boolean;
  /** Why not, when not usable. */
  reason?: string;
  /** What to do about it. */
  fix?: string;
}

export const CUDA_INSTALL_COMMAND = 'ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node';

const PROVIDER_LIBS = ['libonnxruntime_providers_cuda.so', 'libonnxruntime_providers_shared.so'];

/** onnxruntime-node's native folder for this platform (where the install script puts the CUDA libs). */
export function onnxruntimeBinDir(): string {
  const require = createRequire(import.meta.url);
  const pkg = require.resolve('onnxruntime-node/package.json');
  return join(dirname(pkg), 'bin', 'napi-v6', process.platform, process.arch);
}

/** A one-node model (Identity on a float[1]): enough to make a session load the provider. */
export function probeModel(): Uint8Array {
  return encodeModel({
    irVersion: 8,
    opsets: [{ domain: '', version: 13 }],
    producerName: 'fromage-bot',
    producerVersion: 'cuda-probe',
    graph: {
      name: 'cuda_probe',
      nodes: [{ opType: 'Identity', inputs: ['x'], outputs: ['y'] }],
      initializers: [],
      inputs: [{ name: 'x', elemType: 'FLOAT', shape: [1] }],
      outputs: [{ name: 'y', elemType: 'FLOAT', shape: [1] }],
    },
  });
}

export interface ProbeOptions {
  platform?: string;
  arch?: string;
  binDir?: string;
  /** Creates a session on CUDA from model bytes; throws when the provider cannot load. */
  createSession?: (model: Uint8Array) => Promise<void>;
}

async function createCudaSession(model: Uint8Array): Promise<void> {
  const ort = await import('onnxruntime-node');
  const session = await ort.InferenceSession.create(model, { executionProviders: ['cuda'] });
  await session.release();
}

export async function checkCudaProvider(options: ProbeOptions = {}): Promise<CudaProviderStatus> {
  const platform = options.platform ?? process.platform;
  const arch = options.arch ?? process.arch;
  if (platform !== 'linux' || arch !== 'x64') {
    return {
      usable: false,
      reason: `onnxruntime-node provides its CUDA execution provider for Linux x64 only (this is ${platform}/${arch})`,
      fix: 'use FROMAGE_DEVICE=cpu with int4 weights',
    };
  }
  const binDir = options.binDir ?? onnxruntimeBinDir();
  const missing = PROVIDER_LIBS.filter((f) => !existsSync(join(binDir, f)));
  if (missing.length > 0) {
    return {
      usable: false,
      reason: `the CUDA provider of onnxruntime-node is not installed (${missing.join(', ')} missing in ${binDir})`,
      fix: `run \`${CUDA_INSTALL_COMMAND}\` (downloads the provider from NuGet), or build ops/Dockerfile.cuda`,
    };
  }
  try {
    await (options.createSession ?? createCudaSession)(probeModel());
    return { usable: true };
  } catch (err) {
    return {
      usable: false,
      reason: `the CUDA provider did not load: ${(err as Error).message.split('\n')[0]}`,
      fix: 'install the CUDA 12 runtime, cuBLAS and cuDNN 9 libraries and an NVIDIA driver (or run ops/Dockerfile.cuda with --gpus all)',
    };
  }
}

/** The line to log when FROMAGE_DEVICE=cuda cannot be honoured. */
export function cudaFallbackWarning(status: CudaProviderStatus): string {
  return `FROMAGE_DEVICE=cuda but ${status.reason}; running on CPU instead (fp16 bundles are built for CUDA: for CPU, 'fromage setup --weights int4'). Fix: ${status.fix}.`;
}
