/**
 * Building blocks shared by the vision and decoder graphs: Linear in every weight format,
 * LayerNorm, and multi-head attention in plain ONNX ops with HF's numerics (q scaled after
 * its projection, softmax in float32).
 */
import { MS_DOMAIN, attr, type OnnxGraphWriter } from '../onnx/graph-builder.ts';
import { quantizeMatMulNBits } from '../quantize.ts';
import { bytesOf, toHalf, transpose2d, type WeightDType } from './weights.ts';

export interface LinearOptions {
  /** Storage of this layer's weight: fp32, fp16 (+ Cast), or int8/int4 MatMulNBits. */
  dtype: WeightDType;
  /** MatMulNBits block size (int8/int4). */
  blockSize: number;
  /**
   * MatMulNBits accuracy_level: 0 (the default here) computes in float32 with the dequantized
   * weights (exactly the quantized model); 4 quantizes activations to int8 per block on CPU
   * (1.5x faster for 4-bit, 30x for 8-bit in onnxruntime 1.30; CUDA ignores it).
   */
  accuracyLevel?: 0 | 4;
}

/**
 * y = x W^T + b for a torch Linear weight W [out, in] (row-major float32). The weight array may
 * be dropped by the caller once this resolves.
 */
export async function linear(
  g: OnnxGraphWriter,
  x: string,
  name: string,
  weight: Float32Array,
  bias: Float32Array | undefined,
  outFeatures: number,
  inFeatures: number,
  o: LinearOptions,
): Promise<string> {
  let y: string;
  if (o.dtype === 'int4' || o.dtype === 'int8') {
    const bits = o.dtype === 'int4' ? 4 : 8;
    // A torch Linear weight [out, in] is MatMulNBits' [N, K] row order.
    const q = quantizeMatMulNBits(weight, inFeatures, outFeatures, 'NK', { bits, blockSize: o.blockSize });
    const b = await g.weight(`${name}.qweight`, 'UINT8', q.bShape, q.B);
    const s = await g.weight(`${name}.scales`, 'FLOAT', q.scalesShape, bytesOf(q.scales));
    const inputs = [x, b, s];
    if (q.zeroPoints) inputs.push(await g.weight(`${name}.zero_points`, 'UINT8', [q.zeroPoints.length], q.zeroPoints));
    y = g.op(
      'MatMulNBits',
      inputs,
      { K: attr.int(inFeatures), N: attr.int(outFeatures), bits: attr.int(bits), block_size: attr.int(o.blockSize), accuracy_level: attr.int(o.accuracyLevel ?? 0) },
      { domain: MS_DOMAIN },
    );
  } else {
    const wt = transpose2d(weight, outFeatures, inFeatures);
    if (o.dtype === 'fp16') {
      // An fp16 compute island: only the activation is cast, so the weights stay fp16 in
      // memory (a Cast of the weight would be folded or run per call into a float32 copy).
      const w = await g.weight(`${name}.weight_fp16`, 'FLOAT16', [inFeatures, outFeatures], bytesOf(toHalf(wt)));
      const xh = g.op('Cast', [x], { to: attr.int(10) });
      y = g.op('Cast', [g.op('MatMul', [xh, w])], { to: attr.int(1) });
    } else {
      const w = await g.weight(`${name}.weight_t`, 'FLOAT', [inFeatures, outFeatures], bytesOf(wt));
      y = g.op('MatMul', [x, w]);
    }
  }
  if (bias) y = g.op('Add', [y, await g.weight(`${name}.bias`, 'FLOAT', [outFeatures], bytesOf(bias))]);
  return y;
}

export async function layerNorm(g: OnnxGraphWriter, x: string, name: string, gamma: Float32Array, beta: Float32Array, eps: number): Promise<string> {
  const s = await g.weight(`${name}.weight`, 'FLOAT', [gamma.length], bytesOf(gamma));
  const b = await g.weight(`${name}.bias`, 'FLOAT', [beta.length], bytesOf(beta));
  return g.op('LayerNormalization', [x, s, b], { axis: attr.int(-1), epsilon: attr.float(eps) });
}

/** [B, S, heads*dim] -> [B, heads, S, dim]. */
export function splitHeads(g: OnnxGraphWriter, x: string, heads: number, headDim: number): string {
  const r = g.op('Reshape', [x, g.constInt64([0, 0, heads, headDim])]);
  return g.op('Transpose', [r], { perm: attr.ints([0, 2, 1, 3]) });
}

/** [B, heads, S, dim] -> [B, S, heads*dim]. */
export function mergeHeads(g: OnnxGraphWriter, x: string, hidden: number): string {
  const t = g.op('Transpose', [x], { perm: attr.ints([0, 2, 1, 3]) });
  return g.op('Reshape', [t, g.constInt64([0, 0, hidden])]);
}

/**
 * softmax(q k^T + bias) v for q [B,h,S,d] (already scaled), k/v [B,h,T,d], bias broadcastable
 * to [B,h,S,T] (or undefined).
 */
export function attentionCore(g: OnnxGraphWriter, q: string, k: string, v: string, bias: string | undefined): string {
  const kt = g.op('Transpose', [k], { perm: attr.ints([0, 1, 3, 2]) });
  let scores = g.op('MatMul', [q, kt]);
  if (bias) scores = g.op('Add', [scores, bias]);
  const p = g.op('Softmax', [scores], { axis: attr.int(-1) });
  return g.op('MatMul', [p, v]);
}

/**
 * Attention over a caller-owned cache plus the new positions, without joining the big tensors:
 *   scores = [q kCache^T | q kNew^T] + bias      ([B,h,S,C] and [B,h,S,S] side by side)
 *   out    = P[..., :C] vCache + P[..., C:] vNew
 * q [B,h,S,d] (already scaled); kCache/vCache [B,h,C,d] (C may be 0); kNew/vNew [B,h,S,d];
 * bias broadcastable to [B,h,S,C+S]; cacheLen is the scalar int64 C. Only the scores (small)
 * are concatenated; onnxruntime fuses each Transpose into its MatMul (FusedMatMul transB), so
 * the cache is read in place.
 */
export function cachedAttention(g: OnnxGraphWriter, q: string, kCache: string, vCache: string, kNew: string, vNew: string, bias: string, cacheLen: string): string {
  const scoresOf = (k: string) => g.op('MatMul', [q, g.op('Transpose', [k], { perm: attr.ints([0, 1, 3, 2]) })]);
  const scores = g.op('Concat', [scoresOf(kCache), scoresOf(kNew)], { axis: attr.int(-1) });
  const p = g.op('Softmax', [g.op('Add', [scores, bias])], { axis: attr.int(-1) });
  const c = g.op('Unsqueeze', [cacheLen, g.constInt64([0])]);
  const lastAxis = g.constInt64([3]);
  const pCache = g.op('Slice', [p, g.constInt64([0]), c, lastAxis]);
  const pNew = g.op('Slice', [p, c, g.constInt64([Number.MAX_SAFE_INTEGER]), lastAxis]);
  return g.op('Add', [g.op('MatMul', [pCache, vCache]), g.op('MatMul', [pNew, vNew])]);
}
