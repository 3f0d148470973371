/**
 * embed.onnx: token ids -> input embeddings, a Gather over the embedding table as FROMAGe
 * uses it (resized to the tokenizer length, the [RET] row from the FROMAGe checkpoint).
 */
import { attr, OnnxGraphWriter } from '../onnx/graph-builder.ts';
import { bytesOf, toHalf } from './weights.ts';

/**
 * How the table is stored. `fp16` is exact for OPT's fp16 checkpoints. `int8` keeps one int8
 * per value and one float32 scale per 32 values of a row (symmetric): a quarter of fp32, half of
 * fp16, for the quantized bundles whose other weights are 4/8-bit anyway. Only the gathered rows
 * are dequantized, so the cost per token is nil.
 */
export type EmbedStorage = 'fp32' | 'fp16' | 'int8';

/** Values per int8 scale. */
export const EMBED_INT8_BLOCK = 32;

/** Writes embed.onnx. `table` is the resized [vocab, hidden] float32 table. */
export async function buildEmbedGraph(path: string, table: Float32Array, vocab: number, hidden: number, storage: EmbedStorage | boolean): Promise<void> {
  const kind: EmbedStorage = storage === true ? 'fp16' : storage === false ? 'fp32' : storage;
  const g = await OnnxGraphWriter.create(path, { name: 'fromage_embed', docString: 'OPT embed_tokens resized to the tokenizer, [RET] row from FROMAGe' });
  try {
    const ids = g.input('input_ids', 'INT64', ['batch', 'seq']);
    let out: string;
    if (kind === 'int8' && hidden % EMBED_INT8_BLOCK === 0) {
      const q = quantizeRowsInt8(table, vocab, hidden);
      const blocks = hidden / EMBED_INT8_BLOCK;
      const w = await g.weight('embed_tokens.weight_int8', 'INT8', [vocab, hidden], bytesOf(q.values));
      const s = await g.weight('embed_tokens.scales', 'FLOAT', [vocab, blocks], bytesOf(q.scales));
      const rows = g.op('Cast', [g.op('Gather', [w, ids], { axis: attr.int(0) })], { to: attr.int(1) });
      const scales = g.op('Unsqueeze', [g.op('Gather', [s, ids], { axis: attr.int(0) }), g.constInt64([3])]);
      const blocked = g.op('Reshape', [rows, g.constInt64([0, 0, blocks, EMBED_INT8_BLOCK])]);
      out = g.op('Reshape', [g.op('Mul', [blocked, scales]), g.constInt64([0, 0, hidden])]);
    } else if (kind === 'fp16' || kind === 'int8') {
      const w = await g.weight('embed_tokens.weight_fp16', 'FLOAT16', [vocab, hidden], bytesOf(toHalf(table)));
      out = g.op('Cast', [g.op('Gather', [w, ids], { axis: attr.int(0) })], { to: attr.int(1) });
    } else {
      const w = await g.weight('embed_tokens.weight', 'FLOAT', [vocab, hidden], bytesOf(table));
      out = g.op('Gather', [w, ids], { axis: attr.int(0) });
    }
    g.output('inputs_embeds', 'FLOAT', ['batch', 'seq', hidden], out);
    await g.finish({ graph: 'embed', storage: kind });
  } catch (err) {
    await g.abort();
    throw err;
  }
}

/** Symmetric int8 per block of EMBED_INT8_BLOCK values of a row: x ~= q * scale. */
export function quantizeRowsInt8(table: Float32Array, vocab: number, hidden: number): { values: Int8Array; scales: Float32Array } {
  const blocks = hidden / EMBED_INT8_BLOCK;
  const values = new Int8Array(vocab * hidden);
  const scales = new Float32Array(vocab * blocks);
  for (let b = 0; b < vocab * blocks; b++) {
    const start = b * EMBED_INT8_BLOCK;
    let amax = 0;
    for (let i = 0; i < EMBED_INT8_BLOCK; i++) amax = Math.max(amax, Math.abs(table[start + i]));
    const scale = amax > 0 ? amax / 127 : 1;
    scales[b] = scale;
    for (let i = 0; i < EMBED_INT8_BLOCK; i++) values[start + i] = Math.max(-127, Math.min(127, Math.round(table[start + i] / scale)));
  }
  return { values, scales };
}
