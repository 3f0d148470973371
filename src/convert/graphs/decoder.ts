/**
 * decoder.onnx: OPT decoder (HF OPTDecoder numerics) with KV cache, tied lm_head and FROMAGe's
 * text_hidden_fcs retrieval head. I/O contract: checkpoints/README.md.
 *
 *   h = inputs_embeds + embed_positions[position_ids + 2]
 *   per layer: h += out_proj(attn(LN(h)));  h += fc2(relu(fc1(LN(h))))
 *   hf = final_layer_norm(h)
 *   logits = hf[:, -k:] @ table^T          (k = num_logits_to_keep; 0 = all positions)
 *   ret_embeddings = normalize(text_hidden_fcs(hf))
 * The cache is caller-owned and has a fixed CAPACITY C per call: past_key_values [B,h,C,d] of which
 * only the slots the attention_mask marks are filled. Attention scores the cache and the new
 * positions separately and joins only the scores (cachedAttention), so the big K/V tensors are
 * never concatenated or copied; the graph returns just the new positions' keys/values.
 * Causal + padding mask are built inside the graph from attention_mask and C.
 */
import { attr, OnnxGraphWriter } from '../onnx/graph-builder.ts';
import { cachedAttention, layerNorm, linear, mergeHeads, splitHeads, type LinearOptions } from './layers.ts';
import { bytesOf, CheckpointTensors, ConvertError } from './weights.ts';

export interface OptConfig {
  hidden_size: number;
  ffn_dim: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  max_position_embeddings: number;
  vocab_size: number;
  word_embed_proj_dim: number;
  do_layer_norm_before: boolean;
  activation_function: string;
  enable_bias?: boolean;
  _remove_final_layer_norm?: boolean;
  layer_norm_elementwise_affine?: boolean;
}

/** OPT's learned positions are offset by 2 (fairseq's padding_idx legacy). */
export const OPT_POSITION_OFFSET = 2;
const LN_EPS = 1e-5;
const FLOAT32_MIN = -3.4028234663852886e38;

/** `decoder.` (OPTModel) or `model.decoder.` (OPTForCausalLM), checked against the config. */
export function optKeyPrefix(opt: CheckpointTensors, cfg: OptConfig): string {
  const prefix = ['decoder.', 'model.decoder.'].find((p) => opt.has(`${p}embed_tokens.weight`));
  if (!prefix) throw new ConvertError(`${opt.label}: no decoder.embed_tokens.weight or model.decoder.embed_tokens.weight; is this an OPT checkpoint?`);
  if (opt.has(`${prefix}project_in.weight`) || cfg.word_embed_proj_dim !== cfg.hidden_size) {
    throw new ConvertError(`${opt.label}: word_embed_proj_dim ${cfg.word_embed_proj_dim} != hidden_size ${cfg.hidden_size} (project_in/project_out) is not supported; FROMAGe uses OPT-6.7B, which has none`);
  }
  if (!cfg.do_layer_norm_before || cfg._remove_final_layer_norm) {
    throw new ConvertError(`${opt.label}: only pre-LayerNorm OPT with a final layer norm is supported (config.json do_layer_norm_before=${cfg.do_layer_norm_before})`);
  }
  if (cfg.activation_function !== 'relu') {
    throw new ConvertError(`${opt.label}: activation_function ${cfg.activation_function} is not supported (expected relu)`);
  }
  if (cfg.hidden_size % cfg.num_attention_heads !== 0) {
    throw new ConvertError(`config.json: hidden_size ${cfg.hidden_size} is not divisible by num_attention_heads ${cfg.num_attention_heads}`);
  }
  return prefix;
}

export interface DecoderGraphOptions {
  /** Attention and FFN Linear layers. */
  layers: LinearOptions;
  /** The tied lm_head. */
  lmHead: LinearOptions;
}

export interface DecoderHeads {
  /** Resized embedding table [vocab, hidden] (incl. the [RET] row); the tied lm_head. */
  table: Float32Array;
  vocab: number;
  /** text_hidden_fcs.0.0 Linear [emb, hidden] and bias. */
  textFcWeight: Float32Array;
  textFcBias: Float32Array;
  sharedEmbDim: number;
}

export async function buildDecoderGraph(path: string, opt: CheckpointTensors, cfg: OptConfig, heads: DecoderHeads, o: DecoderGraphOptions): Promise<void> {
  const prefix = optKeyPrefix(opt, cfg);
  const H = cfg.hidden_size;
  const F = cfg.ffn_dim;
  const nh = cfg.num_attention_heads;
  const hd = H / nh;
  const L = cfg.num_hidden_layers;
  const nPos = cfg.max_position_embeddings + OPT_POSITION_OFFSET;
  const why = 'the OPT config.json';
  const read = async (name: string, shape: number[]) => opt.f32(prefix + name, shape, why);
  const readBias = async (name: string, shape: number[]) => (cfg.enable_bias === false ? undefined : read(name, shape));

  const g = await OnnxGraphWriter.create(path, { name: 'fromage_decoder', docString: 'OPT decoder with KV cache, tied lm_head, FROMAGe text_hidden_fcs' });
  try {
    const embeds = g.input('inputs_embeds', 'FLOAT', ['batch', 'seq', H]);
    const mask = g.input('attention_mask', 'INT64', ['batch', 'total_seq']);
    const positionIds = g.input('position_ids', 'INT64', ['batch', 'seq']);
    const keep = g.input('num_logits_to_keep', 'INT64', []);
    const past: { key: string; value: string }[] = [];
    for (let i = 0; i < L; i++) {
      past.push({
        key: g.input(`past_key_values.${i}.key`, 'FLOAT', ['batch', nh, 'cache_capacity', hd]),
        value: g.input(`past_key_values.${i}.value`, 'FLOAT', ['batch', nh, 'cache_capacity', hd]),
      });
    }

    // Positions.
    const posTable = await read('embed_positions.weight', [nPos, H]);
    const posW = await g.weight('embed_positions.weight', 'FLOAT', [nPos, H], bytesOf(posTable));
    const posEmb = g.op('Gather', [posW, g.op('Add', [positionIds, g.constInt64([OPT_POSITION_OFFSET], [])])], { axis: attr.int(0) });
    let h = g.op('Add', [embeds, posEmb]);

    // Mask bias [B, 1, S, C+S] over [cache slots, new positions]: 0 where new position i may see
    // key j, else float32 min. Cache slots are never in the future (j < C <= C+i); new keys
    // are causal (j - C <= i); attention_mask masks empty slots and padding.
    const dimOf = (x: string, axis: number) => g.op('Squeeze', [g.op('Slice', [g.op('Shape', [x]), g.constInt64([axis]), g.constInt64([axis + 1])]), g.constInt64([0])]);
    const S = dimOf(embeds, 1);
    const C = dimOf(past[0].key, 2);
    const T = dimOf(mask, 1);
    const one = g.constInt64([1], []);
    const keyIdx = g.op('Unsqueeze', [g.op('Range', [g.constInt64([0], []), T, one]), g.constInt64([0])]);
    const queryIdx = g.op('Unsqueeze', [g.op('Range', [C, g.op('Add', [C, S]), one]), g.constInt64([1])]);
    const causal = g.op('LessOrEqual', [keyIdx, queryIdx]);
    const padding = g.op('Unsqueeze', [g.op('Cast', [mask], { to: attr.int(9) }), g.constInt64([1, 2])]);
    const allowed = g.op('And', [causal, padding]);
    const bias = g.op('Where', [allowed, g.constFloat([0], []), g.constFloat([FLOAT32_MIN], [])]);

    const scaling = g.constFloat([hd ** -0.5], []);
    for (let i = 0; i < L; i++) {
      const p = `layers.${i}.`;
      const lin = async (x: string, n: string, out: number, inn: number) =>
        linear(g, x, `${p}${n}`, await read(`${p}${n}.weight`, [out, inn]), await readBias(`${p}${n}.bias`, [out]), out, inn, o.layers);

      let x = await layerNorm(g, h, `${p}self_attn_layer_norm`, await read(`${p}self_attn_layer_norm.weight`, [H]), await read(`${p}self_attn_layer_norm.bias`, [H]), LN_EPS);
      const q = g.op('Mul', [await lin(x, 'self_attn.q_proj', H, H), scaling]);
      const k = await lin(x, 'self_attn.k_proj', H, H);
      const v = await lin(x, 'self_attn.v_proj', H, H);
      const newK = g.op('Identity', [splitHeads(g, k, nh, hd)], {}, { outputs: [`new_key_values.${i}.key`] });
      const newV = g.op('Identity', [splitHeads(g, v, nh, hd)], {}, { outputs: [`new_key_values.${i}.value`] });
      const ctx = mergeHeads(g, cachedAttention(g, splitHeads(g, q, nh, hd), past[i].key, past[i].value, newK, newV, bias, C), H);
      h = g.op('Add', [h, await lin(ctx, 'self_attn.out_proj', H, H)]);

      x = await layerNorm(g, h, `${p}final_layer_norm`, await read(`${p}final_layer_norm.weight`, [H]), await read(`${p}final_layer_norm.bias`, [H]), LN_EPS);
      const act = g.op('Relu', [await lin(x, 'fc1', F, H)]);
      h = g.op('Add', [h, await lin(act, 'fc2', H, F)]);
    }
    const hf = await layerNorm(g, h, 'final_layer_norm', await read('final_layer_norm.weight', [H]), await read('final_layer_norm.bias', [H]), LN_EPS);

    // Logits for the last k positions only (the decode loop needs one).
    const start = g.op('Neg', [g.op('Unsqueeze', [keep, g.constInt64([0])])]);
    const lastK = g.op('Slice', [hf, start, g.constInt64([Number.MAX_SAFE_INTEGER]), g.constInt64([1])]);
    const logits = await linear(g, lastK, 'lm_head', heads.table, undefined, heads.vocab, H, o.lmHead);
    g.output('logits', 'FLOAT', ['batch', 'kept', heads.vocab], logits);

    const E = heads.sharedEmbDim;
    const t = await linear(g, hf, 'text_hidden_fcs.0.0', heads.textFcWeight, heads.textFcBias, E, H, { dtype: 'fp32', blockSize: o.layers.blockSize });
    const norm = g.op('Max', [g.op('ReduceL2', [t], { axes: attr.ints([-1]), keepdims: attr.int(1) }), g.constFloat([1e-12], [])]);
    g.output('ret_embeddings', 'FLOAT', ['batch', 'seq', E], g.op('Div', [t, norm]));

    for (let i = 0; i < L; i++) {
      g.output(`new_key_values.${i}.key`, 'FLOAT', ['batch', nh, 'seq', hd], `new_key_values.${i}.key`);
      g.output(`new_key_values.${i}.value`, 'FLOAT', ['batch', nh, 'seq', hd], `new_key_values.${i}.value`);
    }
    await g.finish({ graph: 'decoder' });
  } catch (err) {
    await g.abort();
    throw err;
  }
}
