/**
 * embed.onnx: token ids -> input embeddings, a Gather over the embedding table as FROMAGe
 * uses it (resized to the tokenizer length, the [RET] row from the FROMAGe checkpoint).
 */
import { attr, OnnxGraphWriter } from '../onnx/graph-builder.ts';
import { bytesOf, toHalf } from './weights.ts';

/**
 * Writes embed.onnx. `table` is the resized [vocab, hidden] float32 table; `fp16` stores it as
 * float16 (exact for OPT's fp16 checkpoints) and casts the gathered rows to float32.
 */
export async function buildEmbedGraph(path: string, table: Float32Array, vocab: number, hidden: number, fp16: boolean): Promise<void> {
  const g = await OnnxGraphWriter.create(path, { name: 'fromage_embed', docString: 'OPT embed_tokens resized to the tokenizer, [RET] row from FROMAGe' });
  try {
    const ids = g.input('input_ids', 'INT64', ['batch', 'seq']);
    let out: string;
    if (fp16) {
      const w = await g.weight('embed_tokens.weight_fp16', 'FLOAT16', [vocab, hidden], bytesOf(toHalf(table)));
      out = g.op('Cast', [g.op('Gather', [w, ids], { axis: attr.int(0) })], { to: attr.int(1) });
    } else {
      const w = await g.weight('embed_tokens.weight', 'FLOAT', [vocab, hidden], bytesOf(table));
      out = g.op('Gather', [w, ids], { axis: attr.int(0) });
    }
    g.output('inputs_embeds', 'FLOAT', ['batch', 'seq', hidden], out);
    await g.finish({ graph: 'embed' });
  } catch (err) {
    await g.abort();
    throw err;
  }
}
