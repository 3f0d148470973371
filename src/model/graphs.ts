/**
 * Typed calls into the bundle's three graphs (I/O contract: checkpoints/README.md). `decode` is
 * batch 1: the decoder's KV cache is a caller-owned KvCache that each call reads in place and
 * extends with the new positions. `decodeStep` runs one new position for each row of a batched
 * cache (src/serving/slot-pool.ts).
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

/**
 * Runs one decoder call with exclusive use of the decoder (src/serving/batcher.ts), so a long
 * prefill's chunks take turns with the decode steps of the rows already answering.
 */
export type DecoderGate = <T>(call: () => Promise<T>) => Promise<T>;

/** Several sequences' caches in one set of buffers, one new position per row per step. */
export interface BatchedCache {
  readonly rows: number;
  /** past_key_values.* of the rows, [rows, heads, capacity, headDim]. */
  feeds(): Record<string, ort.Tensor>;
  /** [rows, capacity + 1]: each row's filled slots and its new position 1, the rest 0. */
  attentionMask(): ort.Tensor;
  /** [rows, 1]: each row's filled length. */
  positionIds(): ort.Tensor;
  /** Stores the step's new_key_values ([rows, heads, 1, headDim] each) after each row's filled slots. */
  append(newKv: readonly Float32Array[]): void;
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

  private readonly gate: DecoderGate;

  constructor(
    private readonly bundle: Bundle,
    private readonly options: { prefillChunk?: number; gate?: DecoderGate } = {},
  ) {
    this.prefillChunk = options.prefillChunk ?? DEFAULT_PREFILL_CHUNK;
    this.gate = options.gate ?? ((call) => call());
    const m = bundle.manifest.model;
    this.hidden = m.hidden_size;
    this.vocab = m.vocab_size;
    this.embDim = m.shared_emb_dim;
    this.layers = m.num_layers;
    this.heads = m.num_heads;
    this.headDim = m.head_dim;
  }

  /** The same graphs, every decoder call of `decode` taken through `gate` (and chunked at `prefillChunk`, if given). */
  withGate(gate: DecoderGate, prefillChunk = this.prefillChunk): FromageGraphs {
    return new FromageGraphs(this.bundle, { ...this.options, gate, prefillChunk });
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

  /**
   * One decoder call for all rows of `cache`: `embeds` is rows x hidden (each row's next input),
   * at each row's own position. Returns rows x vocab logits and rows x shared_emb_dim [RET]
   * embeddings. Not gated: the batcher calls it inside its gate.
   */
  async decodeStep(embeds: Float32Array, cache: BatchedCache): Promise<DecoderOutput> {
    const rows = cache.rows;
    if (embeds.length !== rows * this.hidden) throw new RangeError(`expected ${rows} x ${this.hidden} input embeddings, got ${embeds.length} values`);
    const out = await this.bundle.decoder.run({
      inputs_embeds: new ort.Tensor('float32', embeds, [rows, 1, this.hidden]),
      attention_mask: cache.attentionMask(),
      position_ids: cache.positionIds(),
      num_logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(1n), []),
      ...cache.feeds(),
    });
    const fresh: Float32Array[] = [];
    for (let i = 0; i < this.layers; i++) fresh.push(out[`new_key_values.${i}.key`].data as Float32Array, out[`new_key_values.${i}.value`].data as Float32Array);
    cache.append(fresh);
    return { logits: copy(out.logits), retEmbeddings: copy(out.ret_embeddings) };
  }

  private decodeOnce(embeds: Float32Array, cache: KvCache, keep: number): Promise<DecoderOutput> {
    return this.gate(() => this.decodeOnceUngated(embeds, cache, keep));
  }

  private async decodeOnceUngated(embeds: Float32Array, cache: KvCache, keep: number): Promise<DecoderOutput> {
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
