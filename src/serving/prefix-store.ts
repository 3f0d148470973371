/**
 * Kept KV caches in memory, keyed by what their positions hold (position-keys.ts), with the
 * disk spill behind them (kv-spill.ts). The engine asks for the longest kept prefix of a new
 * prompt before prefilling it and gives back the whole sequence's cache after the answer.
 *
 * Entries are whole sequences compared key by key from position 0; a match may use any common
 * prefix of an entry (KV at position i depends on positions 0..i only). A handful of
 * conversations are kept at a time, so a linear scan costs microseconds against a prefill's
 * seconds. An entry's positions are stored in pieces: the next turn of a dialogue adds one
 * piece with its new positions and shares the earlier ones (with the entry it replaces, or with
 * the one it diverges from after a re-tokenized answer), as a radix tree (SGLang) shares
 * branches, while eviction stays per whole sequence and the disk holds one file per entry.
 *
 * Memory is bounded by `budgetBytes` (distinct pieces + keys), least recently used first; an entry
 * being copied out is never evicted; an entry larger than the whole budget is not kept in memory
 * (it may still go to disk). The budget is shared with the live caches (`memory`: the batch's
 * rows, prompts being prefilled): live bytes come first, and counting more of them evicts kept
 * entries; kept entries get what is left. Evicted entries are written to the spill in the background (the
 * writes are serialized; at most half the budget, or one entry, waits for them), and close()
 * writes what is still kept.
 */
import { bodyOf, decodeKvInto, encodedBytes, encodeKv, joinPieces, shiftedReader, type EncodedKv, type KvCodecName } from './kv-codec.ts';
import { KvSpill, type KvSpillOptions } from './kv-spill.ts';
import type { KvMemory, KvReader, KvShape, KvStore, KvStoreStats, KvWriter, PositionKey, PrefixMatch } from './kv-types.ts';
import { commonPrefixLength } from './position-keys.ts';

export interface KvStoreOptions {
  /**
   * FROMAGE_KV_CACHE_MB in bytes, for live and kept caches together (live first); 0 turns reuse
   * off (match finds nothing, insert keeps nothing, live caches are not bounded here).
   */
  readonly budgetBytes: number;
  /** How kept caches are stored; default DEFAULT_KV_CODEC. 'fp32' keeps them exact. */
  readonly codec?: KvCodecName;
  /** The disk spill; absent or a budget of 0: none. */
  readonly spill?: KvSpillOptions;
  readonly warn?: (message: string) => void;
  readonly now?: () => number;
  /**
   * close() starts no new spill write after this many milliseconds (default 5000), so a
   * shutdown fits service managers' stop timeouts; the most recently used entries go first.
   */
  readonly closeTimeMs?: number;
  /** Share of the budget the least recently used kept entries on disk should make up (default 0.25; 0 writes nothing ahead). */
  readonly writeAheadShare?: number;
  /** Bytes of the budget kept caches leave to the allocators' free lists (default 0; `fromage serve`: kvHeadroomBytes). */
  readonly headroomBytes?: number;
}

/**
 * fp32: every codec converts back for a few percent of the prefill it saves or less, so speed
 * does not decide; exactness does: fp16 and int8 move the next logits (by 4e-2 on the
 * OPT-125m-shaped bundle) and flipped greedy tokens, while an answer must not depend on
 * whether its prefix was kept (bench/kv-store.bench.ts, docs/runtime.md "Kept caches").
 */
export const DEFAULT_KV_CODEC: KvCodecName = 'fp32';

/** Bookkeeping per entry besides its data (keys are counted at 8 bytes each on top). */
const ENTRY_OVERHEAD_BYTES = 256;
/** Share of the budget that the least recently used kept entries on disk should make up (writeAhead). */
const WRITE_AHEAD_SHARE = 0.25;
/** Pieces an entry may have before they are joined (each copy-out walks them all, per head). */
const MAX_PIECES = 16;

/** Consecutive positions of a kept sequence; shared by the entries that hold them. */
interface Piece {
  readonly start: number;
  readonly kv: EncodedKv;
  /** Kept entries holding this piece: its bytes count in the budget once while any does. */
  refs: number;
}

interface Entry {
  readonly keys: readonly PositionKey[];
  /** Positions [0, keys.length), in order. */
  readonly pieces: readonly Piece[];
  lastUsed: number;
  /** copyInto calls in progress. */
  pins: number;
  /** The spill already holds these keys (read from it, or written): evicting needs no write. */
  onDisk: boolean;
  /** A write ahead of eviction is queued or running (its data is read until it ends). */
  writing: boolean;
  /** Bytes this entry's eviction left allocated until its write ends (counted in `held`). */
  heldBytes: number;
}

function overheadOf(keys: readonly PositionKey[]): number {
  return keys.length * 8 + ENTRY_OVERHEAD_BYTES;
}

export interface PrefixStoreStats extends KvStoreStats {
  /** Live bytes counted in the budget (kept bytes are `bytes`). */
  readonly liveBytes: number;
  /** Evicted (or too big to keep) entries' bytes still allocated while their spill writes run. */
  readonly writingBytes: number;
  readonly diskEntries: number;
  readonly diskBytes: number;
  readonly diskBudgetBytes: number;
  readonly spillErrors: number;
}

export class PrefixStore implements KvStore {
  /** Insertion order = least recently used first. */
  private readonly entries = new Set<Entry>();
  /** Bytes of the distinct pieces of kept entries, plus each entry's bookkeeping. */
  private used = 0;
  /** Live bytes (memory.growLive/shrinkLive): the budget's first claim. */
  private live = 0;
  private closed = false;
  /** Present when the budget is > 0. */
  readonly memory: KvMemory | undefined;
  private readonly codec: KvCodecName;
  private readonly spill: Promise<KvSpill> | undefined;
  /** The spill once open (for stats, which are synchronous). */
  private spillState: KvSpill | undefined;
  private writes: Promise<void> = Promise.resolve();
  private pendingWriteBytes = 0;
  /** Evicted entries' bytes still allocated while their writes ahead run (evict). */
  private held = 0;
  private readonly counters = { reusedPositions: 0, prefilledPositions: 0, evictions: 0, spillWrites: 0, spillReads: 0, droppedSpills: 0 };

  constructor(private readonly options: KvStoreOptions) {
    this.codec = options.codec ?? DEFAULT_KV_CODEC;
    if (!Number.isFinite(options.budgetBytes) || options.budgetBytes < 0) throw new RangeError(`budgetBytes must be >= 0, got ${options.budgetBytes}`);
    const spill = options.spill;
    if (options.budgetBytes > 0) {
      const live = (): number => this.live;
      this.memory = {
        budgetBytes: options.budgetBytes,
        get liveBytes() {
          return live();
        },
        growLive: (bytes) => this.growLive(bytes),
        shrinkLive: (bytes) => {
          this.live = Math.max(0, this.live - bytes);
        },
      };
    }
    if (options.budgetBytes > 0 && spill && spill.budgetBytes > 0) {
      this.spill = KvSpill.open({ warn: options.warn, now: options.now, ...spill });
      void this.spill.then((s) => (this.spillState = s));
    }
  }

  private get enabled(): boolean {
    return this.options.budgetBytes > 0 && !this.closed;
  }

  private now(): number {
    return this.options.now?.() ?? Date.now();
  }

  /** The bytes live and kept caches may count: the budget less the allocators' headroom. */
  private get capacity(): number {
    return Math.max(0, this.options.budgetBytes - (this.options.headroomBytes ?? 0));
  }

  /** Room kept entries have: what live caches leave of the capacity. */
  private get room(): number {
    return Math.max(0, this.capacity - this.live - this.held - this.pendingWriteBytes);
  }

  private growLive(bytes: number): void {
    if (!(bytes > 0)) return;
    this.live += bytes;
    for (const victim of [...this.entries]) {
      if (this.used <= this.room) break;
      if (victim.pins > 0) continue;
      this.evict(victim);
    }
  }

  private evict(victim: Entry): void {
    const before = this.used;
    this.remove(victim);
    this.counters.evictions++;
    if (victim.writing) {
      // Its write reads the data: the memory stays allocated until the write ends, so it still counts.
      victim.heldBytes = before - this.used;
      this.held += victim.heldBytes;
    } else if (this.spill && !victim.onDisk) {
      // Evicted for room needed now: writing it first would hold that room until the write ends.
      this.counters.droppedSpills++;
    }
  }

  private touch(entry: Entry): void {
    entry.lastUsed = this.now();
    this.entries.delete(entry);
    this.entries.add(entry);
  }

  async match(keys: readonly PositionKey[], maxLength: number): Promise<PrefixMatch | undefined> {
    if (!this.enabled) return undefined;
    const limit = Math.min(maxLength, keys.length);
    if (limit <= 0) return undefined;
    let best: { entry: Entry; length: number } | undefined;
    for (const entry of this.entries) {
      const length = commonPrefixLength(entry.keys, keys, limit);
      // Later entries are more recently used: on a tie, prefer them.
      if (length > 0 && (!best || length >= best.length)) best = { entry, length };
    }
    let pieces = best?.entry.pieces;
    let entry = best?.entry;
    let length = best?.length ?? 0;
    if (best) this.touch(best.entry);
    const spill = this.spill && (await this.spill);
    while (spill && length < limit) {
      const onDisk = spill.best(keys, limit);
      if (!onDisk || onDisk.length <= length) break;
      // Room first, as for insert: the read allocates the entry before keep() could evict for it.
      const need = onDisk.entry.header.bodyBytes + overheadOf(onDisk.entry.keys);
      if (this.enabled && need <= this.room) this.makeRoom(need, entry);
      const read = await spill.read(onDisk.entry);
      if (!read) continue; // damaged: removed from the spill; look again
      this.counters.spillReads++;
      pieces = [{ start: 0, kv: read, refs: 0 }];
      length = onDisk.length;
      entry = this.enabled ? this.keep(onDisk.entry.keys, pieces, true) : undefined;
    }
    if (!pieces || length === 0 || !this.enabled) return undefined;
    return this.matchOf(pieces, length, entry);
  }

  private matchOf(pieces: readonly Piece[], length: number, entry: Entry | undefined): PrefixMatch {
    return {
      length,
      copyInto: async (into: KvWriter) => {
        // The match holds its data either way; the pin keeps an entry being copied counted in
        // the budget (not evicted) so memory stays within it.
        if (entry) entry.pins++;
        try {
          for (const p of pieces) {
            if (p.start >= length) break;
            decodeKvInto(p.kv, into, Math.min(p.kv.length, length - p.start), p.start);
          }
        } finally {
          if (entry) entry.pins--;
        }
        this.counters.reusedPositions += length;
      },
    };
  }

  async insert(keys: readonly PositionKey[], from: KvReader): Promise<void> {
    if (!this.enabled || keys.length === 0) return;
    if (from.length < keys.length) throw new RangeError(`insert: ${keys.length} keys but the cache holds ${from.length} positions`);
    let base: { entry: Entry; length: number } | undefined;
    for (const entry of this.entries) {
      const common = commonPrefixLength(entry.keys, keys);
      if (common === keys.length) {
        this.touch(entry); // already kept, as itself or inside a longer sequence
        return;
      }
      if (common > (base?.length ?? 0) && entry.pieces[0].kv.codec === this.codec) base = { entry, length: common };
    }
    // Room first: the pieces are allocated before keep() could evict for them, and this cache's
    // row is still live, so evicting afterwards would leave both past the budget for a while.
    const bytes = this.newBytesFor(keys, from.shape, base);
    if (bytes <= this.capacity - this.live) {
      this.makeRoom(bytes, base?.entry);
      // Evicted entries still being written hold their memory until the write ends: wait for it.
      while (this.used + bytes > this.room && this.held + this.pendingWriteBytes > 0) {
        await this.writes;
        if (!this.enabled) return;
        this.makeRoom(bytes, base?.entry);
      }
    }
    this.keep([...keys], this.piecesFor(keys.length, from, base), false);
  }

  /** Bytes keeping `keys` allocates: the encoded tail past what `base` shares (all of it without one), and the entry's bookkeeping. */
  private newBytesFor(keys: readonly PositionKey[], shape: KvShape, base: { entry: Entry; length: number } | undefined): number {
    let start = 0;
    if (base) {
      const shared = base.entry.pieces.filter((p) => p.start + p.kv.length <= base.length).length;
      const straddling = base.entry.pieces.find((p) => p.start < base.length && p.start + p.kv.length > base.length);
      // Past MAX_PIECES the pieces are joined into one copy of the whole entry.
      if (shared + 1 <= MAX_PIECES) start = straddling ? straddling.start : base.length;
    }
    return encodedBytes(shape, keys.length - start, this.codec) + overheadOf(keys);
  }

  /** Evicts least recently used entries (not `spare`, whose pieces a new entry shares, nor pinned ones) until `bytes` more fit. */
  private makeRoom(bytes: number, spare?: Entry): void {
    for (const victim of [...this.entries]) {
      if (this.used + bytes <= this.room) return;
      if (victim === spare || victim.pins > 0) continue;
      this.evict(victim);
    }
  }

  /**
   * The pieces of a new entry of `length` positions. Positions a kept entry already holds are
   * shared with it (whole pieces) or copied as encoded (the piece the common prefix ends in), so
   * keeping a dialogue's next turn encodes and stores only that turn.
   */
  private piecesFor(length: number, from: KvReader, base: { entry: Entry; length: number } | undefined): Piece[] {
    if (!base) return [{ start: 0, kv: encodeKv(from, length, this.codec), refs: 0 }];
    const common = base.length;
    const shared = base.entry.pieces.filter((p) => p.start + p.kv.length <= common);
    const straddling = base.entry.pieces.find((p) => p.start < common && p.start + p.kv.length > common);
    const tailStart = straddling ? straddling.start : common;
    const tail = encodeKv(shiftedReader(from, tailStart, length), length - tailStart, this.codec, straddling ? { kv: straddling.kv, length: common - tailStart } : undefined);
    const pieces = [...shared, { start: tailStart, kv: tail, refs: 0 }];
    if (pieces.length <= MAX_PIECES) return pieces;
    return [{ start: 0, kv: joinPieces(pieces.map((p) => p.kv)), refs: 0 }];
  }

  /** Bytes adding `pieces` under `keys` would take now (pieces already kept count nothing). */
  private costOf(keys: readonly PositionKey[], pieces: readonly Piece[]): number {
    return overheadOf(keys) + pieces.reduce((n, p) => n + (p.refs === 0 ? p.kv.data.byteLength : 0), 0);
  }

  /** Adds an entry (evicting least recently used ones); drops entries it extends. Returns it when kept. */
  private keep(keys: readonly PositionKey[], pieces: readonly Piece[], onDisk: boolean): Entry | undefined {
    for (const entry of this.entries) {
      if (entry.keys.length <= keys.length && commonPrefixLength(entry.keys, keys) === entry.keys.length) this.remove(entry);
    }
    const entry: Entry = { keys, pieces, lastUsed: this.now(), pins: 0, onDisk, writing: false, heldBytes: 0 };
    const budget = this.room;
    // Evicting an entry that shares pieces with this one frees less: recount after each.
    for (const victim of [...this.entries]) {
      if (this.used + this.costOf(keys, pieces) <= budget) break;
      if (victim.pins > 0 || overheadOf(keys) + pieces.reduce((n, p) => n + p.kv.data.byteLength, 0) > budget) continue;
      this.evict(victim);
    }
    if (this.used + this.costOf(keys, pieces) > budget) {
      this.spillLater(entry); // too big for what live caches leave, or everything else is being copied
      return undefined;
    }
    for (const p of pieces) if (p.refs++ === 0) this.used += p.kv.data.byteLength;
    this.used += overheadOf(keys);
    this.entries.add(entry);
    this.writeAhead();
    return entry;
  }

  /**
   * Queues writes of the least recently used kept entries not on disk yet, until those on disk
   * (or being written) make up WRITE_AHEAD_SHARE of the budget: the next evictions then free
   * their memory at once instead of holding it, uncounted, until a write ends.
   */
  private writeAhead(): void {
    if (!this.spill) return;
    const target = this.options.budgetBytes * (this.options.writeAheadShare ?? WRITE_AHEAD_SHARE);
    if (!(target > 0)) return;
    let covered = 0;
    for (const entry of this.entries) {
      if (covered >= target) return;
      covered += entry.pieces.reduce((n, p) => n + p.kv.data.byteLength, 0);
      if (entry.onDisk || entry.writing) continue;
      entry.writing = true;
      const spill = this.spill;
      this.writes = this.writes.then(async () => {
        try {
          // Replaced by a longer entry, or dropped, since it was queued: nothing to keep on disk.
          if (!this.entries.has(entry) && entry.heldBytes === 0) return;
          if (await (await spill).write(entry.keys, bodyOf(entry.pieces.map((p) => p.kv)), entry.lastUsed)) {
            this.counters.spillWrites++;
            entry.onDisk = true;
          }
        } finally {
          entry.writing = false;
          this.held -= entry.heldBytes;
          entry.heldBytes = 0;
        }
      });
    }
  }

  private remove(entry: Entry): void {
    if (!this.entries.delete(entry)) return;
    for (const p of entry.pieces) if (--p.refs === 0) this.used -= p.kv.data.byteLength;
    this.used -= overheadOf(entry.keys);
  }

  /**
   * Queues a spill write of an entry that is not kept (evicted before any write ahead, or too big
   * to keep); its memory stays allocated until the write ends, so the write is dropped unless
   * that fits in the budget beside everything else.
   */
  private spillLater(entry: Entry): void {
    if (!this.spill || entry.onDisk) return;
    const body = bodyOf(entry.pieces.map((p) => p.kv));
    const bytes = body.byteLength;
    if (this.live + this.used + this.held + this.pendingWriteBytes + bytes > this.capacity) {
      this.counters.droppedSpills++;
      return;
    }
    this.pendingWriteBytes += bytes;
    const spill = this.spill;
    this.writes = this.writes.then(async () => {
      try {
        if (await (await spill).write(entry.keys, body, entry.lastUsed)) {
          this.counters.spillWrites++;
          entry.onDisk = true;
        }
      } finally {
        this.pendingWriteBytes -= bytes;
      }
    });
  }

  notePrefilled(positions: number): void {
    if (positions > 0) this.counters.prefilledPositions += positions;
  }

  /** Resolves when the spill writes queued so far are done. */
  async flush(): Promise<void> {
    await this.writes;
  }

  stats(): PrefixStoreStats {
    return {
      entries: this.entries.size,
      bytes: this.used,
      liveBytes: this.live,
      writingBytes: this.held + this.pendingWriteBytes,
      budgetBytes: this.options.budgetBytes,
      reusedPositions: this.counters.reusedPositions,
      prefilledPositions: this.counters.prefilledPositions,
      evictions: this.counters.evictions,
      spillWrites: this.counters.spillWrites,
      spillReads: this.counters.spillReads,
      diskEntries: this.spillState?.count ?? 0,
      diskBytes: this.spillState?.bytes ?? 0,
      diskBudgetBytes: this.spill ? (this.options.spill?.budgetBytes ?? 0) : 0,
      spillErrors: (this.spillState?.writeErrors ?? 0) + this.counters.droppedSpills,
    };
  }

  /**
   * Writes what is kept to the spill, most recently used first (the disk keeps them by recency)
   * until closeTimeMs has passed, and releases memory.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const started = performance.now();
    const kept = [...this.entries].reverse();
    this.entries.clear();
    this.used = 0;
    if (!this.spill) return;
    const spill = await this.spill;
    await this.writes;
    let skipped = 0;
    for (const entry of kept) {
      if (entry.onDisk) continue;
      if (performance.now() - started >= (this.options.closeTimeMs ?? 5000)) {
        skipped++;
        continue;
      }
      if (await spill.write(entry.keys, bodyOf(entry.pieces.map((p) => p.kv)), entry.lastUsed)) this.counters.spillWrites++;
    }
    if (skipped > 0) this.options.warn?.(`${skipped} kept KV caches were not written to disk at shutdown (out of time); those conversations prefill again`);
  }
}

export function createKvStore(options: KvStoreOptions): PrefixStore {
  return new PrefixStore(options);
}
