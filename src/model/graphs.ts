/**
 * Typed calls into the bundle's three graphs (I/O contract: checkpoints/README.md). Batch is
 * always 1 here; the decoder's KV cache is kept as onnxruntime tensors and handed back as-is.
 */
import * as ort from 'onnxruntime-node';
import type { Bundle } from './bundle.ts';

export interface VisionOutput {
  /** n_visual_tokens x hidden, the captioning embeddings an image contributes to a prompt. */
  readonly visualEmbs: Float32Array;
  /** shared_emb_dim, raw (unnormalized) retrieval embedding. */
  readonly retEmb: Float32Array;
}

/** The decoder's cache after some positions: one key and one value tensor per layer. */
export interface KvCache {
  readonly length: number;
  readonly tensors: readonly ort.Tensor[];
}

export interface DecoderOutput {
  /** keep x vocab logits for the last `keep` new positions. */
  readonly logits: Float32Array;
  /** seq x shared_emb_dim, L2-normalized [RET] embeddings of every new position. */
  readonly retEmbeddings: Float32Array;
  readonly cache: KvCache;
}

export class FromageGraphs {
  readonly hidden: number;
  readonly vocab: number;
  readonly embDim: number;
  private readonly layers: number;
  private readonly heads: number;
  private readonly headDim: number;

  constructor(private readonly bundle: Bundle) {
    const m = bundle.manifest.model;
    this.hidden = m.hidden_size;
    this.vocab = m.vocab_size;
    this.embDim = m.shared_emb_dim;
    this.layers = m.num_layers;
    this.heads = m.num_heads;
    this.headDim = m.head_dim;
  }

  get nVisualTokens(): number {
    return this.bundle.manifest.model.n_visual_tokens;
  }

  async encodeImage(pixelValues: Float32Array): Promise<VisionOutput> {
    const S = this.bundle.manifest.preprocess.crop_size;
    const out = await this.bundle.vision.run({ pixel_values: new ort.Tensor('float32', pixelValues, [1, 3, S, S]) }, ['visual_embs', 'ret_embs']);
    return { visualEmbs: copy(out.visual_embs), retEmb: copy(out.ret_embs) };
  }

  /** seq x hidden input embeddings for token ids. */
  async embedTokens(ids: readonly number[]): Promise<Float32Array> {
    if (ids.length === 0) return new Float32Array(0);
    const out = await this.bundle.embed.run({ input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, ids.length]) });
    return copy(out.inputs_embeds);
  }

  emptyCache(): KvCache {
    const t = new ort.Tensor('float32', new Float32Array(0), [1, this.heads, 0, this.headDim]);
    return { length: 0, tensors: Array.from({ length: this.layers * 2 }, () => t) };
  }

  /** Runs `embeds` (seq x hidden) at positions cache.length.. and returns the grown cache. */
  async decode(embeds: Float32Array, cache: KvCache, keep = 1): Promise<DecoderOutput> {
    const seq = embeds.length / this.hidden;
    const total = cache.length + seq;
    const feeds: Record<string, ort.Tensor> = {
      inputs_embeds: new ort.Tensor('float32', embeds, [1, seq, this.hidden]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
      position_ids: new ort.Tensor('int64', BigInt64Array.from({ length: seq }, (_, i) => BigInt(cache.length + i)), [1, seq]),
      num_logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(BigInt(keep)), []),
    };
    for (let i = 0; i < this.layers; i++) {
      feeds[`past_key_values.${i}.key`] = cache.tensors[2 * i];
      feeds[`past_key_values.${i}.value`] = cache.tensors[2 * i + 1];
    }
    const out = await this.bundle.decoder.run(feeds);
    const tensors: ort.Tensor[] = [];
    for (let i = 0; i < this.layers; i++) tensors.push(out[`present.${i}.key`], out[`present.${i}.value`]);
    return { logits: copy(out.logits), retEmbeddings: copy(out.ret_embeddings), cache: { length: total, tensors } };
  }
}

function copy(t: ort.Tensor): Float32Array {
  return Float32Array.from(t.data as Float32Array);
}
