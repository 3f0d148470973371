/**
 * The rows of the batched decoder: up to `maxRows` sequences whose caches share one buffer per
 * layer and key/value, laid out [rows, heads, capacity, headDim]. Each row owns its filled
 * length; a decode step feeds rows 0..n-1 (a contiguous prefix of the buffers, wrapped in place)
 * and appends one position to each. A leaving row's place is taken by the last row, so the
 * active rows stay a prefix without copying anything per step.
 *
 * Empty slots are masked, not skipped: every row's attention runs over the whole shared
 * capacity, so the capacity is what the rows need (each row's prompt plus the tokens it may
 * still feed back), not a doubling: it grows to fit a joining row and shrinks when the rows left
 * need at most half of it (one copy of the filled slots either way, at most once per job). The
 * buffers are released when the last row leaves, so an idle pool holds no memory.
 *
 * Under a memory budget (`memory`, kv-memory.ts) the pool reports each buffer it allocates and
 * drops, and a resize replaces one layer's buffer at a time, so at most one layer exists twice;
 * with `tightRows` it allocates exactly the rows it holds (no spare rows) and gives rows back when
 * it shrinks.
 */
import * as ort from 'onnxruntime-node';
import type { BatchedCache } from '../model/graphs.ts';
import type { KvReader, KvShape, KvWriter } from './kv-types.ts';

export interface SlotPoolShape extends KvShape {
  /** The decoder's positions: no row grows past them. */
  readonly maxPositions: number;
}

/** Where the pool reports the bytes of the buffers it allocates and drops. */
export interface PoolMemory {
  grow(bytes: number): void;
  shrink(bytes: number): void;
}

export interface SlotPoolOptions {
  readonly memory?: PoolMemory;
  /** Allocate exactly the rows held (no doubling) and shrink rows with the capacity. */
  readonly tightRows?: boolean;
}

export class SlotPool implements BatchedCache {
  private rowCap = 0;
  private cap = 0;
  private buffers: Float32Array[] = [];
  /** Filled positions of each active row. */
  private readonly lengths: number[] = [];
  /** Positions each active row may reach (its prompt plus the tokens it may still feed). */
  private readonly ends: number[] = [];

  constructor(
    readonly shape: SlotPoolShape,
    readonly maxRows: number,
    private readonly options: SlotPoolOptions = {},
  ) {
    if (!(Number.isInteger(maxRows) && maxRows >= 1)) throw new RangeError(`a slot pool needs at least one row, got ${maxRows}`);
  }

  /** Active rows (0..rows-1). */
  get rows(): number {
    return this.lengths.length;
  }

  get capacity(): number {
    return this.cap;
  }

  /** Rows the buffers currently have room for. */
  get allocatedRows(): number {
    return this.rowCap;
  }

  /** Bytes of the buffers now. */
  get allocatedBytes(): number {
    return this.buffers.reduce((n, b) => n + b.byteLength, 0);
  }

  rowLength(row: number): number {
    this.check(row);
    return this.lengths[row];
  }

  /**
   * Adds a row holding positions [0, from.length) of `from` (a prefilled single-sequence cache),
   * with room for `more` positions after them. Returns its index (always the last row).
   */
  join(from: KvReader, more: number): number {
    if (this.rows === this.maxRows) throw new RangeError(`all ${this.maxRows} rows are in use`);
    const { heads, headDim, layers } = this.shape;
    if (from.shape.layers !== layers || from.shape.heads !== heads || from.shape.headDim !== headDim) throw new RangeError('the cache joining the pool has another shape');
    const end = from.length + more;
    if (end > this.shape.maxPositions) throw new RangeError(`a row holds at most ${this.shape.maxPositions} positions; ${end} were asked for`);
    const rows = this.rows + 1;
    const rowCap = rows <= this.rowCap ? this.rowCap : this.options.tightRows ? rows : Math.min(this.maxRows, Math.max(rows, 2 * this.rowCap));
    this.resize(rowCap, Math.max(this.cap, end));
    const row = this.lengths.length;
    for (let j = 0; j < 2 * layers; j++) {
      for (let h = 0; h < heads; h++) this.buffers[j].set(from.read(j, h, 0, from.length), this.offset(row, h, 0));
    }
    this.lengths.push(from.length);
    this.ends.push(end);
    return row;
  }

  /**
   * Frees `row` at once: the last row moves into its place (its filled positions only). Returns
   * the index the moved row had (now `row`), or undefined when `row` was the last one.
   */
  leave(row: number): number | undefined {
    this.check(row);
    const last = this.rows - 1;
    let moved: number | undefined;
    if (row !== last) {
      const { heads, headDim } = this.shape;
      const n = this.lengths[last] * headDim;
      for (const buf of this.buffers) {
        for (let h = 0; h < heads; h++) buf.copyWithin(this.offset(row, h, 0), this.offset(last, h, 0), this.offset(last, h, 0) + n);
      }
      this.lengths[row] = this.lengths[last];
      this.ends[row] = this.ends[last];
      moved = last;
    }
    this.lengths.pop();
    this.ends.pop();
    if (this.rows === 0) this.release();
    else {
      const needed = Math.max(...this.ends);
      if (needed <= this.cap / 2) this.resize(this.options.tightRows ? this.rows : this.rowCap, needed);
    }
    return moved;
  }

  /** Read access to one row (for keeping its cache in a prefix store). Valid until the pool changes. */
  reader(row: number): KvReader {
    this.check(row);
    const length = this.lengths[row];
    return {
      shape: this.shape,
      length,
      read: (j, h, from, to) => {
        if (from < 0 || to > length || from > to) throw new RangeError(`cannot read positions [${from}, ${to}) of a row holding ${length}`);
        return this.buffers[j].subarray(this.offset(row, h, from), this.offset(row, h, to));
      },
    };
  }

  /**
   * A copy of one row's filled positions, detached from the pool (which may then change): what
   * a finished row gives the prefix store, so the store's encoding runs outside the batch's steps.
   */
  snapshot(row: number): KvReader {
    this.check(row);
    const { heads, headDim } = this.shape;
    const length = this.lengths[row];
    const run = length * headDim;
    const copies = this.buffers.map((buf) => {
      const out = new Float32Array(heads * run);
      for (let h = 0; h < heads; h++) out.set(buf.subarray(this.offset(row, h, 0), this.offset(row, h, length)), h * run);
      return out;
    });
    return {
      shape: this.shape,
      length,
      read: (j, h, from, to) => {
        if (from < 0 || to > length || from > to) throw new RangeError(`cannot read positions [${from}, ${to}) of a snapshot holding ${length}`);
        return copies[j].subarray(h * run + from * headDim, h * run + to * headDim);
      },
    };
  }

  /** Write access to one active row's slots [0, capacity) (its length stays as it is). */
  writer(row: number): KvWriter {
    this.check(row);
    return {
      shape: this.shape,
      write: (j, h, at, values) => {
        if (at < 0 || at * this.shape.headDim + values.length > this.cap * this.shape.headDim) throw new RangeError(`cannot write ${values.length / this.shape.headDim} positions at ${at} into a row with room for ${this.cap}`);
        this.buffers[j].set(values, this.offset(row, h, at));
      },
    };
  }

  feeds(): Record<string, ort.Tensor> {
    const { layers, heads, headDim } = this.shape;
    const n = this.rows;
    const size = n * heads * this.cap * headDim;
    const out: Record<string, ort.Tensor> = {};
    for (let i = 0; i < layers; i++) {
      // subarray: onnxruntime-node honours the view's offset, so nothing is copied here.
      out[`past_key_values.${i}.key`] = new ort.Tensor('float32', this.buffers[2 * i].subarray(0, size), [n, heads, this.cap, headDim]);
      out[`past_key_values.${i}.value`] = new ort.Tensor('float32', this.buffers[2 * i + 1].subarray(0, size), [n, heads, this.cap, headDim]);
    }
    return out;
  }

  attentionMask(): ort.Tensor {
    const width = this.cap + 1;
    const mask = new BigInt64Array(this.rows * width);
    this.lengths.forEach((len, r) => {
      mask.fill(1n, r * width, r * width + len);
      mask[r * width + this.cap] = 1n;
    });
    return new ort.Tensor('int64', mask, [this.rows, width]);
  }

  positionIds(): ort.Tensor {
    return new ort.Tensor('int64', BigInt64Array.from(this.lengths, BigInt), [this.rows, 1]);
  }

  append(newKv: readonly Float32Array[]): void {
    const { layers, heads, headDim } = this.shape;
    const n = this.rows;
    if (newKv.length !== layers * 2) throw new RangeError(`expected ${layers * 2} new key/value tensors, got ${newKv.length}`);
    for (const [r, len] of this.lengths.entries()) if (len >= this.cap) throw new RangeError(`row ${r} is full (${len} of ${this.cap} positions)`);
    newKv.forEach((src, j) => {
      if (src.length !== n * heads * headDim) throw new RangeError(`new key/value ${j} has ${src.length} values, expected ${n * heads * headDim}`);
      const dst = this.buffers[j];
      for (let r = 0; r < n; r++) {
        for (let h = 0; h < heads; h++) dst.set(src.subarray((r * heads + h) * headDim, (r * heads + h + 1) * headDim), this.offset(r, h, this.lengths[r]));
      }
    });
    for (let r = 0; r < n; r++) this.lengths[r]++;
  }

  /**
   * Buffers for `rowCap` rows of `cap` positions, holding the active rows' filled slots (one
   * copy), replaced one layer at a time so that at most one layer exists twice.
   */
  private resize(rowCap: number, cap: number): void {
    if (rowCap === this.rowCap && cap === this.cap) return;
    const { heads, headDim, layers } = this.shape;
    const memory = this.options.memory;
    // Dropped one by one as they are copied, so a collection during the next allocation may free them.
    const old: (Float32Array | undefined)[] = this.buffers;
    this.buffers = [];
    const oldCap = this.cap;
    const next: Float32Array[] = [];
    for (let j = 0; j < 2 * layers; j++) {
      memory?.grow(rowCap * heads * cap * headDim * 4);
      const buf = new Float32Array(rowCap * heads * cap * headDim);
      const src = old[j];
      if (src) {
        for (const [r, len] of this.lengths.entries()) {
          if (r >= rowCap) break;
          for (let h = 0; h < heads; h++) {
            const from = (r * heads + h) * oldCap * headDim;
            buf.set(src.subarray(from, from + len * headDim), (r * heads + h) * cap * headDim);
          }
        }
        memory?.shrink(src.byteLength);
        old[j] = undefined;
      }
      next.push(buf);
    }
    this.buffers = next;
    this.rowCap = rowCap;
    this.cap = cap;
  }

  private release(): void {
    this.options.memory?.shrink(this.allocatedBytes);
    this.buffers = [];
    this.ends.length = 0;
    this.rowCap = 0;
    this.cap = 0;
  }

  private offset(row: number, h: number, position: number): number {
    return ((row * this.shape.heads + h) * this.cap + position) * this.shape.headDim;
  }

  private check(row: number): void {
    if (!(Number.isInteger(row) && row >= 0 && row < this.rows)) throw new RangeError(`row ${row} is not active (${this.rows} rows)`);
  }
}
