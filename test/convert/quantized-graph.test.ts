/**
 * The int8/int4 decoder computes exactly the model its quantized weights describe: an fp32
 * decoder built from the dequantized weights (same quantizer, same blocks) gives the same
 * logits up to float32 accumulation noise. This separates "the graph is right" from "how much
 * quantization costs" (quantized.test.ts), which on this fixture is large.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, describe, expect, it } from 'vitest';
import { buildDecoderGraph, optKeyPrefix } from '../../src/convert/graphs/decoder.ts';
import { readOptConfig } from '../../src/convert/graphs/configs.ts';
import { CheckpointTensors } from '../../src/convert/graphs/weights.ts';
import { dequantizeMatMulNBits, quantizeMatMulNBits } from '../../src/convert/quantize.ts';
import { openCheckpoint } from '../../src/convert/readers/index.ts';
import type { TensorSource } from '../../src/convert/tensor-source.ts';
import { maxAbsDiff, OPT_DIR, ref, runDecoder } from './helpers.ts';

const H = 64;
const V = 296;
const RET = 295;
const QUANTIZED = /layers\.\d+\.(self_attn\.(q|k|v|out)_proj|fc1|fc2)\.weight$/;

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function roundTrip(w: Float32Array, n: number, k: number, bits: 4 | 8, blockSize: number): Float32Array {
  return dequantizeMatMulNBits(quantizeMatMulNBits(w, k, n, 'NK', { bits, blockSize }));
}

/** The same checkpoint with every quantized Linear weight replaced by its dequantized value. */
function dequantizedView(src: TensorSource, bits: 4 | 8, blockSize: number): TensorSource {
  return {
    ...src,
    keys: () => src.keys(),
    has: (n) => src.has(n),
    info: (n) => src.info(n),
    files: () => src.files(),
    readRaw: (n) => src.readRaw(n),
    close: () => src.close(),
    async readFloat32(name) {
      const w = await src.readFloat32(name);
      if (!QUANTIZED.test(name)) return w;
      const [n, k] = src.info(name).shape;
      return roundTrip(w, n, k, bits, blockSize);
    },
  };
}

describe.each([
  [8, 32],
  [4, 32],
  [4, 16],
] as const)('int%i decoder (block %i) = fp32 decoder on dequantized weights', (bits, blockSize) => {
  it('prefill and cached-step logits and retrieval embeddings agree', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'qgraph-'));
    dirs.push(dir);
    const cfg = await readOptConfig(join(OPT_DIR, 'config.json'));
    const source = await openCheckpoint(OPT_DIR);
    try {
      const opt = new CheckpointTensors(source, 'opt');
      const prefix = optKeyPrefix(opt, cfg);
      const table = (await source.readFloat32(`${prefix}embed_tokens.weight`)).slice(0, V * H);
      table.set(new Float32Array(H).fill(0.01), RET * H);
      const heads = { vocab: V, textFcWeight: new Float32Array(16 * H).fill(0.1), textFcBias: new Float32Array(16), sharedEmbDim: 16 };
      const dtype = bits === 4 ? 'int4' : 'int8';
      await buildDecoderGraph(join(dir, 'q.onnx'), opt, cfg, { ...heads, table }, { layers: { dtype, blockSize }, lmHead: { dtype, blockSize } });
      const deq = new CheckpointTensors(dequantizedView(source, bits, blockSize), 'opt (dequantized)');
      await buildDecoderGraph(join(dir, 'f.onnx'), deq, cfg, { ...heads, table: roundTrip(table, V, H, bits, blockSize) }, { layers: { dtype: 'fp32', blockSize }, lmHead: { dtype: 'fp32', blockSize } });

      const q = await ort.InferenceSession.create(join(dir, 'q.onnx'), { intraOpNumThreads: 1 });
      const f = await ort.InferenceSession.create(join(dir, 'f.onnx'), { intraOpNumThreads: 1 });
      const embs = (await ref('vis1.input_embs')).data;
      const T = embs.length / H;
      const a = await runDecoder(q, embs, H, 2, 4, undefined, T);
      const b = await runDecoder(f, embs, H, 2, 4, undefined, T);
      expect(maxAbsDiff(a.logits, b.logits)).toBeLessThan(1e-3);
      expect(maxAbsDiff(a.retEmbeddings, b.retEmbeddings)).toBeLessThan(1e-4);
      const next = embs.subarray(0, H);
      const a2 = await runDecoder(q, next, H, 2, 4, a.cache, 1);
      const b2 = await runDecoder(f, next, H, 2, 4, b.cache, 1);
      expect(maxAbsDiff(a2.logits, b2.logits)).toBeLessThan(1e-3);
      await q.release();
      await f.release();
    } finally {
      await source.close();
    }
  });
});
