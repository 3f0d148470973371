/**
 * A plain in-memory KvStore for the serving tests: whole sequences kept exactly (float32), the
 * longest common prefix matched, nothing evicted. It records what it was asked so tests can
 * check that reuse really happened.
 */
import type { KvReader, KvStore, KvStoreStats, PositionKey, PrefixMatch } from '../../src/serving/kv-types.ts';
import { commonPrefixLength } from '../../src/serving/position-keys.ts';

interface Kept {
  readonly keys: readonly PositionKey[];
  /** [tensor][head]: positions x headDim. */
  readonly data: Float32Array[][];
  readonly headDim: number;
}

export class SimpleKvStore implements KvStore {
  readonly entries: Kept[] = [];
  reused = 0;
  prefilled = 0;
  inserts = 0;
  closed = false;

  async match(keys: readonly PositionKey[], maxLength: number): Promise<PrefixMatch | undefined> {
    let best: Kept | undefined;
    let length = 0;
    for (const e of this.entries) {
      const n = commonPrefixLength(e.keys, keys, maxLength);
      if (n > length) [best, length] = [e, n];
    }
    if (!best) return undefined;
    const kept = best;
    this.reused += length;
    return {
      length,
      copyInto: async (into) => {
        kept.data.forEach((heads, j) => heads.forEach((v, h) => into.write(j, h, 0, v.subarray(0, length * kept.headDim))));
      },
    };
  }

  async insert(keys: readonly PositionKey[], from: KvReader): Promise<void> {
    if (from.length < keys.length) throw new RangeError(`insert of ${keys.length} keys from a cache of ${from.length}`);
    this.inserts++;
    const { layers, heads, headDim } = from.shape;
    const data = Array.from({ length: 2 * layers }, (_, j) => Array.from({ length: heads }, (_, h) => Float32Array.from(from.read(j, h, 0, keys.length))));
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i];
      if (e.keys.length <= keys.length && commonPrefixLength(e.keys, keys) === e.keys.length) this.entries.splice(i, 1);
    }
    this.entries.push({ keys: [...keys], data, headDim });
  }

  notePrefilled(positions: number): void {
    this.prefilled += positions;
  }

  stats(): KvStoreStats {
    return { entries: this.entries.length, bytes: 0, budgetBytes: Infinity, reusedPositions: this.reused, prefilledPositions: this.prefilled, evictions: 0, spillWrites: 0, spillReads: 0 };
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
