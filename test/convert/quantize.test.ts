import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { encodeModel, type TensorProtoSpec } from '../../src/convert/onnx/onnx-proto.ts';
import {
  dequantizeMatMulNBits,
  float32ArrayToFloat16,
  float32ToFloat16Bits,
  quantizeMatMulNBits,
  type MatMulNBitsOptions,
  type MatMulNBitsWeights,
} from '../../src/convert/quantize.ts';
import { halfBitsToFloat } from '../../src/convert/readers/dtype.ts';

/** Deterministic pseudo-random floats in [-1, 1). */
function randoms(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 0x80000000 - 1;
  });
}

function bytesOf(a: Float32Array | Uint8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** A one-node model: Y = MatMulNBits(A, B, scales[, zero_points]). */
function matMulNBitsModel(q: MatMulNBitsWeights, M: number): Uint8Array {
  const inits: TensorProtoSpec[] = [
    { name: 'B', dataType: 'UINT8', dims: q.bShape, raw: q.B },
    { name: 'scales', dataType: 'FLOAT', dims: q.scalesShape, raw: bytesOf(q.scales) },
  ];
  if (q.zeroPoints && q.zeroPointsShape) inits.push({ name: 'zp', dataType: 'UINT8', dims: q.zeroPointsShape, raw: q.zeroPoints });
  return encodeModel({
    irVersion: 10,
    opsets: [
      { domain: '', version: 17 },
      { domain: 'com.microsoft', version: 1 },
    ],
    producerName: 'quantize.test',
    producerVersion: '0',
    graph: {
      name: 'g',
      nodes: [
        {
          opType: 'MatMulNBits',
          domain: 'com.microsoft',
          inputs: q.zeroPoints ? ['A', 'B', 'scales', 'zp'] : ['A', 'B', 'scales'],
          outputs: ['Y'],
          attributes: {
            K: { kind: 'int', value: q.K },
            N: { kind: 'int', value: q.N },
            bits: { kind: 'int', value: q.bits },
            block_size: { kind: 'int', value: q.blockSize },
            accuracy_level: { kind: 'int', value: 0 },
          },
        },
      ],
      initializers: inits,
      inputs: [{ name: 'A', elemType: 'FLOAT', shape: [M, q.K] }],
      outputs: [{ name: 'Y', elemType: 'FLOAT', shape: [M, q.N] }],
    },
  });
}

/** A [M, K] @ W^T with W [N, K], in float64. */
function matmulNT(a: Float32Array, w: Float32Array, M: number, K: number, N: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += a[m * K + k] * w[n * K + k];
      y[m * N + n] = acc;
    }
  return y;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('MatMulNBits packing', () => {
  it('packs 4-bit codes low nibble first, zero points two per byte per row, scales [N * n_blocks]', () => {
    // One row (N=1), K=32, one block: values 0..15 then 15..0 with range [0, 15] -> scale 1, zp 0.
    const w = Float32Array.from({ length: 32 }, (_, k) => (k < 16 ? k : 31 - k));
    const q = quantizeMatMulNBits(w, 32, 1, 'NK', { bits: 4, blockSize: 32 });
    expect(q.bShape).toEqual([1, 1, 16]);
    expect(q.scales).toEqual(Float32Array.of(1));
    expect(Array.from(q.zeroPoints ?? [])).toEqual([0]);
    expect(q.B[0]).toBe(0x10); // k=0 -> low nibble 0, k=1 -> high nibble 1
    expect(q.B[1]).toBe(0x32);
    expect(q.B[15]).toBe(0x01); // k=30 -> 1, k=31 -> 0
    expect(dequantizeMatMulNBits(q)).toEqual(w);
    // Three blocks per row -> ceil(3 * 4 / 8) = 2 zero-point bytes per row.
    const q3 = quantizeMatMulNBits(randoms(2 * 80, 3), 80, 2, 'NK', { bits: 4, blockSize: 32 });
    expect(q3.bShape).toEqual([2, 3, 16]);
    expect(q3.scalesShape).toEqual([6]);
    expect(q3.zeroPointsShape).toEqual([4]);
  });

  it('KN and NK layouts give the same packing', () => {
    const K = 48;
    const N = 5;
    const nk = randoms(K * N, 9);
    const kn = new Float32Array(K * N);
    for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) kn[k * N + n] = nk[n * K + k];
    const a = quantizeMatMulNBits(nk, K, N, 'NK', { bits: 4, blockSize: 16 });
    const b = quantizeMatMulNBits(kn, K, N, 'KN', { bits: 4, blockSize: 16 });
    expect(b.B).toEqual(a.B);
    expect(b.scales).toEqual(a.scales);
  });

  it('round-trip error is at most half a quantization step; zeros stay exact', () => {
    for (const opts of [{ bits: 4 }, { bits: 8 }, { bits: 4, symmetric: true }, { bits: 8, symmetric: true }] as MatMulNBitsOptions[]) {
      const K = 100;
      const N = 7;
      const w = randoms(K * N, 5);
      w[3] = 0;
      const q = quantizeMatMulNBits(w, K, N, 'NK', { ...opts, blockSize: 32 });
      const d = dequantizeMatMulNBits(q);
      for (let n = 0; n < N; n++)
        for (let k = 0; k < K; k++) {
          const scale = q.scales[n * q.nBlocksPerCol + Math.floor(k / 32)];
          expect(Math.abs(d[n * K + k] - w[n * K + k])).toBeLessThanOrEqual(scale / 2 + 1e-6);
        }
      expect(d[3]).toBe(0);
    }
  });

  it('rejects bad bits and block sizes', () => {
    const w = new Float32Array(64);
    expect(() => quantizeMatMulNBits(w, 32, 2, 'NK', { bits: 4, blockSize: 24 })).toThrow(/power of two/);
    expect(() => quantizeMatMulNBits(w, 32, 2, 'NK', { bits: 4, blockSize: 8 })).toThrow(/>= 16/);
    expect(() => quantizeMatMulNBits(w, 32, 2, 'NK', { bits: 3 as 4 })).toThrow(/4 or 8/);
    expect(() => quantizeMatMulNBits(w, 30, 2, 'NK', { bits: 4 })).toThrow(/K\*N/);
  });
});

describe('MatMulNBits in onnxruntime matches the JS dequantize-and-matmul', () => {
  const cases: Array<{ bits: 4 | 8; blockSize: number; symmetric: boolean; K: number; N: number }> = [
    { bits: 4, blockSize: 32, symmetric: false, K: 128, N: 24 },
    { bits: 4, blockSize: 32, symmetric: true, K: 128, N: 24 },
    { bits: 4, blockSize: 16, symmetric: false, K: 80, N: 9 }, // K not a multiple of 32; odd N
    { bits: 4, blockSize: 64, symmetric: false, K: 200, N: 16 }, // ragged last block, 4 blocks/row
    { bits: 8, blockSize: 32, symmetric: false, K: 128, N: 24 },
    { bits: 8, blockSize: 128, symmetric: true, K: 96, N: 10 },
  ];
  for (const c of cases) {
    it(`int${c.bits} block ${c.blockSize} ${c.symmetric ? 'symmetric' : 'asymmetric'} K=${c.K} N=${c.N}`, async () => {
      const M = 3;
      const w = randoms(c.K * c.N, 11 + c.K);
      const a = randoms(M * c.K, 7);
      const q = quantizeMatMulNBits(w, c.K, c.N, 'NK', c);
      const session = await ort.InferenceSession.create(matMulNBitsModel(q, M));
      const out = await session.run({ A: new ort.Tensor('float32', a, [M, c.K]) });
      const y = out.Y.data as Float32Array;
      const expected = matmulNT(a, dequantizeMatMulNBits(q), M, c.K, c.N);
      const unquantized = matmulNT(a, w, M, c.K, c.N);
      const ortVsDequant = maxAbsDiff(y, expected);
      const quantError = maxAbsDiff(expected, unquantized);
      // Printed for the report: ORT's kernel vs our dequantized weights, and the quantization error itself.
      console.log(`MatMulNBits int${c.bits} bs${c.blockSize}${c.symmetric ? ' sym' : ''}: |ORT - JS dequant| ${ortVsDequant.toExponential(2)}, |dequant - fp32| ${quantError.toExponential(2)} (max |y| ${maxAbsDiff(unquantized, new Float64Array(unquantized.length)).toFixed(2)})`);
      expect(ortVsDequant).toBeLessThan(1e-4);
      // Each weight moves by at most half a step, so |error| <= sum_k |a_k| * max_scale / 2.
      const maxScale = Math.max(...q.scales);
      let bound = 0;
      for (let m = 0; m < M; m++) bound = Math.max(bound, a.subarray(m * c.K, (m + 1) * c.K).reduce((x, v) => x + Math.abs(v), 0));
      expect(quantError).toBeLessThanOrEqual((bound * maxScale) / 2);
      await session.release();
    });
  }
});

describe('float32 -> float16 (round to nearest even, bit exact)', () => {
  it('round-trips every finite half and every infinity', () => {
    for (let h = 0; h < 65536; h++) {
      if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) continue; // NaNs
      expect(float32ToFloat16Bits(halfBitsToFloat(h))).toBe(h);
    }
  });

  it('matches Python struct.pack("<e") on ties, subnormals and overflow', () => {
    const cases: Array<[number, number]> = [
      [0.0, 0x0000],
      [-0.0, 0x8000],
      [1.0, 0x3c00],
      [-2.5, 0xc100],
      [65504.0, 0x7bff],
      [65519.98828125, 0x7bff],
      [65520.0, 0x7c00],
      [9.99999993922529e-9, 0x0000],
      [5.960464477539063e-8, 0x0001],
      [2 ** -25, 0x0000], // a tie between 0 and the smallest subnormal: rounds to even (0)
      [2.980232594040899e-8, 0x0001],
      [8.940696716308594e-8, 0x0002],
      [6.103515625e-5, 0x0400],
      [6.097555160522461e-5, 0x03ff],
      [0.10000000149011612, 0x2e66],
      [0.3333333432674408, 0x3555],
      [1.0009765625, 0x3c01],
      [1.00048828125, 0x3c00],
      [1.00146484375, 0x3c02],
      [3.1415927410125732, 0x4248],
      [-100000.0, 0xfc00],
    ];
    for (const [x, h] of cases) expect(float32ToFloat16Bits(x), String(x)).toBe(h);
    expect(float32ToFloat16Bits(NaN) & 0x7e00).toBe(0x7e00);
    expect(Array.from(float32ArrayToFloat16(Float32Array.of(1, -2.5)))).toEqual([0x3c00, 0xc100]);
  });
});
