/**
 * vision.onnx: CLIP ViT vision tower (HF CLIPVisionModel numerics) + FROMAGe's image heads.
 *
 *   pixel_values [B,3,S,S] -> patch Conv -> [CLS; patches] + positions -> pre_layrnorm
 *   -> layers (LN1 -> attention -> +res, LN2 -> fc1 -> quick_gelu -> fc2 -> +res)
 *   -> post_layernorm(CLS) = pooler_output [B, clip_hidden]
 *   -> visual_embeddings -> visual_embs [B, n_vis, hidden];  visual_fc -> ret_embs [B, emb]
 */
import { attr, OnnxGraphWriter } from '../onnx/graph-builder.ts';
import { attentionCore, layerNorm, linear, mergeHeads, splitHeads, type LinearOptions } from './layers.ts';
import { bytesOf, CheckpointTensors, ConvertError } from './weights.ts';

export interface ClipVisionConfig {
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  image_size: number;
  patch_size: number;
  num_channels: number;
  layer_norm_eps: number;
  hidden_act: string;
}

export interface VisionHeadsConfig {
  /** OPT hidden size (captioning embedding width per visual token). */
  hidden: number;
  nVisualTokens: number;
  sharedEmbDim: number;
}

export interface VisionGraphOptions {
  /** Storage of the CLIP encoder Linear layers. */
  encoder: LinearOptions;
}

const CLIP_PREFIX = 'vision_model.';

export async function buildVisionGraph(
  path: string,
  clip: CheckpointTensors,
  clipCfg: ClipVisionConfig,
  fromage: CheckpointTensors,
  heads: VisionHeadsConfig,
  o: VisionGraphOptions,
): Promise<void> {
  if (clipCfg.hidden_act !== 'quick_gelu') {
    throw new ConvertError(`CLIP config.json: vision hidden_act ${clipCfg.hidden_act} is not supported (expected quick_gelu)`);
  }
  const H = clipCfg.hidden_size;
  const I = clipCfg.intermediate_size;
  const nh = clipCfg.num_attention_heads;
  const hd = H / nh;
  const P = clipCfg.patch_size;
  const C = clipCfg.num_channels;
  const grid = Math.floor(clipCfg.image_size / P);
  const nPos = grid * grid + 1;
  const eps = clipCfg.layer_norm_eps;
  const why = 'the CLIP config.json vision_config';
  const fp32: LinearOptions = { dtype: 'fp32', blockSize: o.encoder.blockSize };
  const read = async (name: string, shape: number[]) => clip.f32(CLIP_PREFIX + name, shape, why);

  const g = await OnnxGraphWriter.create(path, { name: 'fromage_vision', docString: 'CLIP ViT vision tower + FROMAGe visual_embeddings / visual_fc' });
  try {
    const S = clipCfg.image_size;
    const px = g.input('pixel_values', 'FLOAT', ['batch', C, S, S]);

    // Embeddings: Conv (no bias) -> [B, H, g, g] -> [B, g*g, H]; prepend CLS; add positions.
    const convW = await read('embeddings.patch_embedding.weight', [H, C, P, P]);
    const conv = g.op('Conv', [px, await g.weight('patch_embedding.weight', 'FLOAT', [H, C, P, P], bytesOf(convW))], {
      kernel_shape: attr.ints([P, P]),
      strides: attr.ints([P, P]),
    });
    const flat = g.op('Reshape', [conv, g.constInt64([0, H, -1])]);
    const patches = g.op('Transpose', [flat], { perm: attr.ints([0, 2, 1]) });
    const cls = await read('embeddings.class_embedding', [H]);
    const clsW = await g.weight('class_embedding', 'FLOAT', [1, 1, H], bytesOf(cls));
    const batch = g.op('Slice', [g.op('Shape', [px]), g.constInt64([0]), g.constInt64([1])]);
    const clsShape = g.op('Concat', [batch, g.constInt64([1, H])], { axis: attr.int(0) });
    const clsB = g.op('Expand', [clsW, clsShape]);
    const tokens = g.op('Concat', [clsB, patches], { axis: attr.int(1) });
    const pos = await read('embeddings.position_embedding.weight', [nPos, H]);
    let h = g.op('Add', [tokens, await g.weight('position_embedding.weight', 'FLOAT', [nPos, H], bytesOf(pos))]);
    h = await layerNorm(g, h, 'pre_layrnorm', await read('pre_layrnorm.weight', [H]), await read('pre_layrnorm.bias', [H]), eps);

    const scale = g.constFloat([hd ** -0.5], []);
    for (let i = 0; i < clipCfg.num_hidden_layers; i++) {
      const p = `encoder.layers.${i}.`;
      const lin = async (x: string, n: string, out: number, inn: number) =>
        linear(g, x, `${p}${n}`, await read(`${p}${n}.weight`, [out, inn]), await read(`${p}${n}.bias`, [out]), out, inn, o.encoder);

      let x = await layerNorm(g, h, `${p}layer_norm1`, await read(`${p}layer_norm1.weight`, [H]), await read(`${p}layer_norm1.bias`, [H]), eps);
      const q = g.op('Mul', [await lin(x, 'self_attn.q_proj', H, H), scale]);
      const k = await lin(x, 'self_attn.k_proj', H, H);
      const v = await lin(x, 'self_attn.v_proj', H, H);
      const ctx = attentionCore(g, splitHeads(g, q, nh, hd), splitHeads(g, k, nh, hd), splitHeads(g, v, nh, hd), undefined);
      const attnOut = await lin(mergeHeads(g, ctx, H), 'self_attn.out_proj', H, H);
      h = g.op('Add', [h, attnOut]);

      x = await layerNorm(g, h, `${p}layer_norm2`, await read(`${p}layer_norm2.weight`, [H]), await read(`${p}layer_norm2.bias`, [H]), eps);
      const f1 = await lin(x, 'mlp.fc1', I, H);
      const act = g.op('Mul', [f1, g.op('Sigmoid', [g.op('Mul', [f1, g.constFloat([1.702], [])])])]);
      h = g.op('Add', [h, await lin(act, 'mlp.fc2', H, I)]);
    }

    const clsOut = g.op('Gather', [h, g.constInt64([0], [])], { axis: attr.int(1) });
    const pooled = await layerNorm(g, clsOut, 'post_layernorm', await read('post_layernorm.weight', [H]), await read('post_layernorm.bias', [H]), eps);
    g.output('pooler_output', 'FLOAT', ['batch', H], pooled);

    // FROMAGe heads (small; always float32).
    const D = heads.hidden;
    const nv = heads.nVisualTokens;
    const E = heads.sharedEmbDim;
    const fw = (name: string, shape: number[]) => fromage.f32(name, shape, 'model_args.json n_visual_tokens/shared_emb_dim and the OPT hidden size');
    const ve = await linear(g, pooled, 'visual_embeddings', await fw('model.visual_embeddings.weight', [D * nv, H]), await fw('model.visual_embeddings.bias', [D * nv]), D * nv, H, fp32);
    g.output('visual_embs', 'FLOAT', ['batch', nv, D], g.op('Reshape', [ve, g.constInt64([0, nv, D])]));
    const vf = await linear(g, pooled, 'visual_fc', await fw('model.visual_fc.weight', [E, H]), await fw('model.visual_fc.bias', [E]), E, H, fp32);
    g.output('ret_embs', 'FLOAT', ['batch', E], vf);
    await g.finish({ graph: 'vision' });
  } catch (err) {
    await g.abort();
    throw err;
  }
}
