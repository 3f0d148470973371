/**
 * Typed calls into the bundle's three graphs (I/O contract: checkpoints/README.md). Batch is
 * always 1 here; the decoder's KV cache is a caller-owned KvCache that each decode call reads
 * in place and extends with the new positions.
 */
import * as ort from 'onnxruntime-node';
import type { Bundle } from './bundle.ts';
import { KvCache } from './kv-cache.ts';
import { throwIfAborted } from './errors.ts';

export { KvCache } from './kv-cache.ts';

/** Positions per decoder call for long inputs (see FromageGraphs.prefillChunk). */
export const DEFAULT_PREFILL_CHUNK = 256;

export interface VisionOutput {
  /** n_visual_tokens x hidden, the captioning embeddings an image contributes to a prompt. */
  readonly visualEmbs: Float32Array;
  /** shared_emb_dim, raw (unnormalized) retrieval embedding. */
  readonly retEmb: Float32Array;
}

export interface DecoderOutput {
  /** keep x vocab logits for the last `keep` new positions. */
  readonly logits: Float32Array;
  /** seq x shared_emb_dim, L2-normalized [RET] embeddings of every new position. */
  readonly retEmbeddings: Float32Array;
}

export class FromageGraphs {
  readonly hidden: number;
  readonly vocab: number;
  readonly embDim: number;
  private readonly layers: number;
  private readonly heads: number;
  private readonly headDim: number;

  /**
   * Longer inputs are decoded in chunks of this many positions through the cache, so a long
   * prompt's attention scores ([heads, chunk, cache + chunk] per layer) stay bounded: a
   * 2000-token prefill of OPT-6.7B in one call needs ~7 GB of activations.
   */
  readonly prefillChunk: number;

  constructor(
    private readonly bundle: Bundle,
    options: { prefillChunk?: number } = {},
  ) {
    this.prefillChunk = options.prefillChunk ?? DEFAULT_PREFILL_CHUNK;
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

  /** A new, empty cache for one generation (it grows as decode fills it). */
  emptyCache(): KvCache {
    return new KvCache({ layers: this.layers, heads: this.heads, headDim: this.headDim, maxPositions: this.bundle.manifest.model.max_positions });
  }

  /**
   * Runs `embeds` (seq x hidden) at positions cache.length.. and appends their keys/values to
   * `cache` (which must not be shared by concurrent calls). Returns the logits of the last
   * `keep` positions and the [RET] embeddings of all of them; inputs longer than
   * `prefillChunk` run chunk by chunk (same result up to float32 summation order).
   */
  async decode(embeds: Float32Array, cache: KvCache, keep = 1, signal?: AbortSignal): Promise<DecoderOutput> {
    const H = this.hidden;
    const seq = embeds.length / H;
    if (seq <= this.prefillChunk) return this.decodeOnce(embeds, cache, keep);
    const firstKept = keep <= 0 ? 0 : seq - Math.min(keep, seq);
    const logits: Float32Array[] = [];
    const rets: Float32Array[] = [];
    for (let at = 0; at < seq; at += this.prefillChunk) {
      // A long prefill is where a timeout or a shutdown would otherwise wait the longest.
      throwIfAborted(signal);
      const n = Math.min(this.prefillChunk, seq - at);
      // The graph cannot keep 0 logits (0 means all), so chunks before the kept ones keep 1 and drop it.
      const kept = Math.max(0, at + n - Math.max(firstKept, at));
      const out = await this.decodeOnce(embeds.subarray(at * H, (at + n) * H), cache, Math.max(kept, 1));
      if (kept > 0) logits.push(out.logits);
      rets.push(out.retEmbeddings);
    }
    return { logits: concat(logits), retEmbeddings: concat(rets) };
  }

  private async decodeOnce(embeds: Float32Array, cache: KvCache, keep: number): Promise<DecoderOutput> {
    const seq = embeds.length / this.hidden;
    // Grow before the call so the append afterwards lands in place.
    cache.reserve(seq);
    const feeds: Record<string, ort.Tensor> = {
      inputs_embeds: new ort.Tensor('float32', embeds, [1, seq, this.hidden]),
      attention_mask: cache.attentionMask(seq),
      position_ids: new ort.Tensor('int64', BigInt64Array.from({ length: seq }, (_, i) => BigInt(cache.length + i)), [1, seq]),
      num_logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(BigInt(keep)), []),
      ...cache.feeds(),
    };
    const out = await this.bundle.decoder.run(feeds);
    const fresh: Float32Array[] = [];
    for (let i = 0; i < this.layers; i++) fresh.push(out[`new_key_values.${i}.key`].data as Float32Array, out[`new_key_values.${i}.value`].data as Float32Array);
    cache.append(fresh, seq);
    return { logits: copy(out.logits), retEmbeddings: copy(out.ret_embeddings) };
  }
}

function concat(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function copy(t: ort.Tensor): Float32Array {
  return Float32Array.from(t.data as Float32Array);
}
