import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { checkCudaProvider, cudaFallbackWarning, onnxruntimeBinDir, probeModel } from '../../src/setup/device.ts';

describe('CUDA provider check', () => {
  it('explains that only Linux x64 has the provider', async () => {
    const s = await checkCudaProvider({ platform: 'darwin', arch: 'arm64' });
    expect(s).toMatchObject({ usable: false });
    expect(s.reason).toMatch(/Linux x64 only \(this is darwin\/arm64\)/);
  });

  it('names the install command when the provider libraries are missing', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ort-bin-'));
    try {
      const s = await checkCudaProvider({ platform: 'linux', arch: 'x64', binDir: dir });
      expect(s.usable).toBe(false);
      expect(s.reason).toMatch(/libonnxruntime_providers_cuda\.so/);
      expect(s.fix).toMatch(/ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node/);
      expect(cudaFallbackWarning(s)).toMatch(/^FROMAGE_DEVICE=cuda but .* running on CPU instead/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('reports the loader error when the libraries are there but CUDA is not', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ort-bin-'));
    try {
      for (const f of ['libonnxruntime_providers_cuda.so', 'libonnxruntime_providers_shared.so']) await writeFile(join(dir, f), '');
      const s = await checkCudaProvider({
        platform: 'linux',
        arch: 'x64',
        binDir: dir,
        createSession: async () => {
          throw new Error('libcudnn.so.9: cannot open shared object file: No such file or directory');
        },
      });
      expect(s).toMatchObject({ usable: false });
      expect(s.reason).toMatch(/did not load: libcudnn\.so\.9/);
      expect(s.fix).toMatch(/cuDNN 9/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('is usable when a CUDA session can be created', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ort-bin-'));
    try {
      for (const f of ['libonnxruntime_providers_cuda.so', 'libonnxruntime_providers_shared.so']) await writeFile(join(dir, f), '');
      let modelBytes = 0;
      const s = await checkCudaProvider({ platform: 'linux', arch: 'x64', binDir: dir, createSession: async (m) => void (modelBytes = m.length) });
      expect(s).toEqual({ usable: true });
      expect(modelBytes).toBeGreaterThan(20);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('probes with a model onnxruntime accepts (so a failure means CUDA, not the probe)', async () => {
    const ort = await import('onnxruntime-node');
    const session = await ort.InferenceSession.create(probeModel(), { executionProviders: ['cpu'] });
    const out = await session.run({ x: new ort.Tensor('float32', new Float32Array([3.5]), [1]) });
    expect(Array.from(out.y.data as Float32Array)).toEqual([3.5]);
    await session.release();
  });

  it('on a machine without the CUDA provider libraries reports CUDA as not usable', async () => {
    expect(onnxruntimeBinDir()).toMatch(/onnxruntime-node[\\/]bin[\\/]napi-v6/);
    if (existsSync(join(onnxruntimeBinDir(), 'libonnxruntime_providers_cuda.so'))) return; // a GPU machine: nothing to assert
    const s = await checkCudaProvider();
    expect(s.usable).toBe(false);
  });
});
