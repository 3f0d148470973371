/**
 * The seam between kept caches (prefix-store.ts, kv-spill.ts) and the live caches that decode
 * (the single-sequence KvCache in src/model, and the batched rows of slot-pool.ts). Both sides
 * see a cache as 2 x layers tensors (key then value per layer), each laid out per head as
 * `length x headDim` float32 values, so neither needs the other's memory layout.
 */

/**
 * What one prompt position holds: a token id (a number) or, for the k-th visual position of
 * an image, `img:<sha256>:<k>`. Two sequences may share KV up to their first differing key,
 * and only from position 0 (OPT's positions are absolute).
 */
export type PositionKey = number | string;

export interface KvShape {
  readonly layers: number;
  readonly heads: number;
  readonly headDim: number;
}

/** Read access to positions [0, length) of a live cache. */
export interface KvReader {
  readonly shape: KvShape;
  readonly length: number;
  /**
   * Positions [from, to) of tensor `j` (2 * layer + 0 for the key, + 1 for the value), head
   * `h`: (to - from) x headDim values. May be a view into the cache: copy before keeping it.
   */
  read(j: number, h: number, from: number, to: number): Float32Array;
}

/** Write access to a live cache that is being filled from a kept prefix. */
export interface KvWriter {
  readonly shape: KvShape;
  /** Writes (values.length / headDim) positions of tensor `j`, head `h`, starting at position `at`. */
  write(j: number, h: number, at: number, values: Float32Array): void;
}

/** The longest kept prefix found for a prompt. */
export interface PrefixMatch {
  /** Positions reused: keys[0, length) are identical to the kept entry's. */
  readonly length: number;
  /** Copies positions [0, length) into `into` (which must hold them); then the match may be dropped. */
  copyInto(into: KvWriter): Promise<void>;
}

export interface KvStoreStats {
  readonly entries: number;
  readonly bytes: number;
  readonly budgetBytes: number;
  readonly reusedPositions: number;
  readonly prefilledPositions: number;
  readonly evictions: number;
  readonly spillWrites: number;
  readonly spillReads: number;
  /** Bytes of evicted or waiting kept caches still allocated while their spill writes run (counted in the budget). */
  readonly writingBytes?: number;
  /** Kept caches that never reached the spill: a write failed, or the entry was evicted before its write began. */
  readonly spillErrors?: number;
}

/**
 * The memory budget kept caches share with the live ones (FROMAGE_KV_CACHE_MB): live bytes are
 * counted here as they are allocated and freed, and kept caches get what is left.
 */
export interface KvMemory {
  readonly budgetBytes: number;
  /** Live bytes counted now. */
  readonly liveBytes: number;
  /**
   * Counts `bytes` more live memory, evicting kept entries first (least recently used, to the
   * spill) so that live + kept stays within the budget. Never refuses: the batcher admits jobs
   * so that live memory alone fits (kv-memory.ts).
   */
  growLive(bytes: number): void;
  shrinkLive(bytes: number): void;
}

/** Kept caches of recent sequences, keyed by what their positions hold (never by conversation). */
export interface KvStore {
  /** Present when live caches count in the store's budget (the batcher then bounds them). */
  readonly memory?: KvMemory;
  /**
   * The longest kept prefix of `keys`, at most `maxLength` positions (the caller passes
   * keys.length - 1 so that at least one position is decoded for logits). Looks in memory,
   * then in the disk spill. undefined: nothing useful (prefill everything).
   */
  match(keys: readonly PositionKey[], maxLength: number): Promise<PrefixMatch | undefined>;
  /** Keeps `from`'s positions [0, keys.length) under `keys` (copied); an entry that is a prefix of it is replaced. */
  insert(keys: readonly PositionKey[], from: KvReader): Promise<void>;
  /** Counts positions that were prefilled rather than reused (for the metrics). */
  notePrefilled(positions: number): void;
  stats(): KvStoreStats;
  /** Writes what the spill should keep (on shutdown) and releases memory. */
  close(): Promise<void>;
}
