/**
 * Keeps the k best (row, score) pairs seen so far. Insertion into a small sorted array: for
 * millions of candidates almost every one fails the threshold test, so this beats a heap for
 * the k (<= a few hundred) retrieval uses. Ties keep the lower row first, like a stable sort.
 */
export class TopK {
  readonly rows: Int32Array;
  readonly scores: Float32Array;
  private count = 0;

  constructor(readonly k: number) {
    this.rows = new Int32Array(k);
    this.scores = new Float32Array(k);
  }

  /** Lowest score that would still be kept; -Infinity until k items are held. */
  get threshold(): number {
    return this.count < this.k ? -Infinity : this.scores[this.k - 1];
  }

  get size(): number {
    return this.count;
  }

  push(row: number, score: number): void {
    if (this.k === 0) return;
    if (this.count === this.k) {
      const last = this.scores[this.k - 1];
      if (!(score > last || (score === last && row < this.rows[this.k - 1]))) return;
    }
    let i = this.count < this.k ? this.count++ : this.k - 1;
    while (i > 0 && (this.scores[i - 1] < score || (this.scores[i - 1] === score && this.rows[i - 1] > row))) {
      this.scores[i] = this.scores[i - 1];
      this.rows[i] = this.rows[i - 1];
      i--;
    }
    this.scores[i] = score;
    this.rows[i] = row;
  }

  /** Best first. */
  entries(): Array<{ row: number; score: number }> {
    const out: Array<{ row: number; score: number }> = [];
    for (let i = 0; i < this.count; i++) out.push({ row: this.rows[i], score: this.scores[i] });
    return out;
  }
}

/** Dot products of `query` with `count` consecutive rows of `matrix` (row-major, width dim). */
export function scoreRows(
  matrix: Float32Array,
  dim: number,
  query: Float32Array,
  count: number,
  visit: (localRow: number, dot: number) => void,
): void {
  for (let r = 0; r < count; r++) {
    const base = r * dim;
    // Four accumulators let V8 overlap the multiply-adds; about 2x a single-sum loop.
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    let d = 0;
    for (; d + 3 < dim; d += 4) {
      s0 += matrix[base + d] * query[d];
      s1 += matrix[base + d + 1] * query[d + 1];
      s2 += matrix[base + d + 2] * query[d + 2];
      s3 += matrix[base + d + 3] * query[d + 3];
    }
    for (; d < dim; d++) s0 += matrix[base + d] * query[d];
    visit(r, s0 + s1 + s2 + s3);
  }
}

/** Returns a normalized float32 copy; a zero vector stays zero. */
export function l2normalize(v: Float32Array | readonly number[]): Float32Array {
  const out = Float32Array.from(v);
  let ss = 0;
  for (let i = 0; i < out.length; i++) ss += out[i] * out[i];
  const n = Math.sqrt(ss);
  if (n > 0) for (let i = 0; i < out.length; i++) out[i] = out[i] / n;
  return out;
}
