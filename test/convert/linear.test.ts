import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, describe, expect, it } from 'vitest';
import { OnnxGraphWriter } from '../../src/convert/onnx/graph-builder.ts';
import { linear } from '../../src/convert/graphs/layers.ts';
import type { WeightDType } from '../../src/convert/graphs/weights.ts';
import { dequantizeMatMulNBits, float32ArrayToFloat16, quantizeMatMulNBits } from '../../src/convert/quantize.ts';
import { halfBitsToFloat } from '../../src/convert/readers/dtype.ts';
import { maxAbsDiff } from './helpers.ts';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** Deterministic pseudo-random values in [-1, 1). */
function noise(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

/** x [M, K] @ w[N, K]^T + b in float64. */
function reference(x: Float32Array, w: Float32Array, b: Float32Array, M: number, K: number, N: number): Float32Array {
  const out = new Float32Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += x[m * K + k] * w[n * K + k];
      out[m * N + n] = acc + b[n];
    }
  return out;
}

async function runLinear(dtype: WeightDType, w: Float32Array, b: Float32Array, x: Float32Array, M: number, K: number, N: number, blockSize = 32): Promise<Float32Array> {
  const dir = await mkdtemp(join(tmpdir(), 'linear-'));
  dirs.push(dir);
  const path = join(dir, 'l.onnx');
  const g = await OnnxGraphWriter.create(path, { name: 'linear' });
  const xin = g.input('x', 'FLOAT', [1, M, K]);
  g.output('y', 'FLOAT', [1, M, N], await linear(g, xin, 'l', w, b, N, K, { dtype, blockSize }));
  await g.finish();
  const s = await ort.InferenceSession.create(path, { intraOpNumThreads: 1 });
  const out = await s.run({ x: new ort.Tensor('float32', x, [1, M, K]) });
  await s.release();
  return out.y.data as Float32Array;
}

describe('linear() in every weight format', () => {
  const M = 3;
  const K = 96; // not a multiple of 64: exercises the partial last block
  const N = 40;
  const w = noise(N * K, 1);
  const b = noise(N, 2);
  const x = noise(M * K, 3);

  it('fp32 matches x W^T + b', async () => {
    expect(maxAbsDiff(await runLinear('fp32', w, b, x, M, K, N), reference(x, w, b, M, K, N))).toBeLessThan(1e-5);
  });

  it('fp16 computes with the fp16-rounded weight', async () => {
    const w16 = Float32Array.from(float32ArrayToFloat16(w), halfBitsToFloat);
    expect(maxAbsDiff(await runLinear('fp16', w, b, x, M, K, N), reference(x, w16, b, M, K, N))).toBeLessThan(1e-5);
  });

  for (const [dtype, bits, blockSize] of [['int8', 8, 32], ['int4', 4, 32], ['int4', 4, 64]] as const) {
    it(`${dtype} (block ${blockSize}) computes with exactly the dequantized weight`, async () => {
      const deq = dequantizeMatMulNBits(quantizeMatMulNBits(w, K, N, 'NK', { bits, blockSize }));
      const got = await runLinear(dtype, w, b, x, M, K, N, blockSize);
      expect(maxAbsDiff(got, reference(x, deq, b, M, K, N))).toBeLessThan(1e-4);
    });
  }
});
