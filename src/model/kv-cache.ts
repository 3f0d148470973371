/**
 * The decoder's key/value cache, owned by the generation loop (batch 1). One Float32Array per
 * layer and per key/value, laid out [1, heads, capacity, head_dim]; slots [0, length) hold
 * data. Each decoder call reads the buffers in place (they are fed as-is) and returns only the
 * new positions' keys/values, which `append` copies into the next slots: no full-cache copy
 * per step. The capacity doubles when it runs out (one copy per growth), up to max_positions.
 * Contract: checkpoints/README.md.
 */
import * as ort from 'onnxruntime-node';
import type { KvReader, KvWriter } from '../serving/kv-types.ts';

export interface KvCacheShape {
  readonly layers: number;
  readonly heads: number;
  readonly headDim: number;
  /** The decoder's positions: the cache never grows past them. */
  readonly maxPositions: number;
}

/** Smallest capacity allocated: short chats grow a few times at most. */
export const MIN_CACHE_CAPACITY = 64;

export class KvCache implements KvReader, KvWriter {
  /** Filled positions (slots [0, length) of every buffer). */
  private filled = 0;
  private cap = 0;
  /** 2 per layer: key, value; each heads x cap x headDim. */
  private buffers: Float32Array[];

  constructor(readonly shape: KvCacheShape) {
    this.buffers = Array.from({ length: shape.layers * 2 }, () => new Float32Array(0));
  }

  get length(): number {
    return this.filled;
  }

  get capacity(): number {
    return this.cap;
  }

  /** Capacity for `length + more` positions: the current one, or doubled until it fits. */
  capacityFor(more: number): number {
    const needed = this.filled + more;
    if (needed > this.shape.maxPositions) {
      throw new RangeError(`the KV cache holds at most ${this.shape.maxPositions} positions; ${this.filled} are filled and ${more} more were asked for`);
    }
    if (needed <= this.cap) return this.cap;
    let cap = Math.max(this.cap, MIN_CACHE_CAPACITY);
    while (cap < needed) cap *= 2;
    return Math.min(cap, this.shape.maxPositions);
  }

  /** Makes room for `more` positions (doubling): called before a decoder call so its append lands in place. */
  reserve(more: number): void {
    this.resize(this.capacityFor(more));
  }

  /**
   * Allocates room for `total` positions exactly, when the caller knows them up front (a
   * generation: prompt + num_words), so the cache never grows mid-answer and holds no slots
   * it will not use. Later growth, if any, doubles as usual.
   */
  preallocate(total: number): void {
    if (total > this.shape.maxPositions) throw new RangeError(`the KV cache holds at most ${this.shape.maxPositions} positions; ${total} were asked for`);
    if (total > this.cap) this.resize(total);
  }

  /**
   * Drops the buffers (the cache is empty afterwards), so that whoever still holds the object,
   * e.g. across an awaited answer after its positions were copied elsewhere, does not hold the
   * memory.
   */
  release(): void {
    this.buffers = this.buffers.map(() => new Float32Array(0));
    this.cap = 0;
    this.filled = 0;
  }

  private resize(cap: number): void {
    if (cap === this.cap) return;
    const { heads, headDim } = this.shape;
    const filledValues = this.filled * headDim;
    this.buffers = this.buffers.map((old) => {
      const next = new Float32Array(heads * cap * headDim);
      for (let h = 0; h < heads; h++) next.set(old.subarray(h * this.cap * headDim, h * this.cap * headDim + filledValues), h * cap * headDim);
      return next;
    });
    this.cap = cap;
  }

  /** KvReader: positions [from, to) of tensor `j`, head `h`, as a view (copy before keeping it). */
  read(j: number, h: number, from: number, to: number): Float32Array {
    if (from < 0 || to > this.filled || from > to) throw new RangeError(`cannot read positions [${from}, ${to}) of a cache holding ${this.filled}`);
    const base = h * this.cap * this.shape.headDim;
    return this.buffers[j].subarray(base + from * this.shape.headDim, base + to * this.shape.headDim);
  }

  /** KvWriter: only inside restorePrefix, which has made room and sets the length afterwards. */
  write(j: number, h: number, at: number, values: Float32Array): void {
    const { headDim } = this.shape;
    if (at < 0 || at * headDim + values.length > this.cap * headDim) throw new RangeError(`cannot write ${values.length / headDim} positions at ${at} into a cache with room for ${this.cap}`);
    this.buffers[j].set(values, (h * this.cap + at) * headDim);
  }

  /**
   * Fills an empty cache with `length` kept positions (a prefix store's copyInto writes them
   * through the KvWriter view); the prompt's remaining positions are then decoded after them.
   */
  async restorePrefix(length: number, copy: (into: KvWriter) => Promise<void>): Promise<void> {
    if (this.filled !== 0) throw new RangeError(`a prefix can only be restored into an empty cache (this one holds ${this.filled})`);
    this.preallocate(Math.max(length, this.cap));
    await copy(this);
    this.filled = length;
  }

  /**
   * The decoder's cache inputs, wrapping the buffers (no copy on the JS side). An empty cache is
   * fed with capacity 0, so a prefill does not score empty slots.
   */
  feeds(): Record<string, ort.Tensor> {
    const { layers, heads, headDim } = this.shape;
    const cap = this.filled === 0 ? 0 : this.cap;
    const out: Record<string, ort.Tensor> = {};
    for (let i = 0; i < layers; i++) {
      const [k, v] = cap === 0 ? [new Float32Array(0), new Float32Array(0)] : [this.buffers[2 * i], this.buffers[2 * i + 1]];
      out[`past_key_values.${i}.key`] = new ort.Tensor('float32', k, [1, heads, cap, headDim]);
      out[`past_key_values.${i}.value`] = new ort.Tensor('float32', v, [1, heads, cap, headDim]);
    }
    return out;
  }

  /** attention_mask for `seq` new positions after the fed cache: filled slots and new positions 1, empty slots 0. */
  attentionMask(seq: number): ort.Tensor {
    const cap = this.filled === 0 ? 0 : this.cap;
    const mask = new BigInt64Array(cap + seq).fill(1n);
    mask.fill(0n, this.filled, cap);
    return new ort.Tensor('int64', mask, [1, cap + seq]);
  }

  /**
   * Copies the decoder's `new_key_values.*` ([1, heads, seq, headDim] each, key/value per layer in
   * order) into slots [length, length + seq), head by head.
   */
  append(newKv: readonly Float32Array[], seq: number): void {
    const { layers, heads, headDim } = this.shape;
    if (newKv.length !== layers * 2) throw new RangeError(`expected ${layers * 2} new key/value tensors, got ${newKv.length}`);
    const run = seq * headDim;
    newKv.forEach((src, j) => {
      if (src.length !== heads * run) throw new RangeError(`new key/value ${j} has ${src.length} values, expected ${heads * run}`);
    });
    this.reserve(seq);
    for (let j = 0; j < newKv.length; j++) {
      const src = newKv[j];
      const dst = this.buffers[j];
      for (let h = 0; h < heads; h++) dst.set(src.subarray(h * run, (h + 1) * run), (h * this.cap + this.filled) * headDim);
    }
    this.filled += seq;
  }
}
