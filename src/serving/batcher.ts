/**
 * Continuous batching: up to `maxRows` answers decode together, one decoder call per step for
 * all of them (each row at its own position, with its own mask). A step for several rows reads
 * the weights once, so it costs less than that many single steps (docs/runtime.md "Batched
 * decoding" has the figures).
 *
 * A new job first prefills its prompt into a cache of its own (src/model's single-sequence
 * path, after copying in the longest kept prefix when a KvStore is given), in chunks of
 * BATCH_PREFILL_CHUNK positions; each chunk takes its turn at the decoder gate between two
 * steps, so rows already answering keep streaming. Then it joins the pool (one copy of its
 * prompt's cache) and decodes with the others. A finished row is copied out and freed at once;
 * the copy is offered to the store in the background (a later prompt's match waits for it); a
 * cancelled row is dropped before the next step. Every decoder call goes through the gate in
 * arrival order, so no two overlap.
 *
 * When the store bounds memory (KvStore.memory: FROMAGE_KV_CACHE_MB > 0), that budget holds the
 * live caches too (kv-memory.ts): each prefill cache and each pool buffer is counted as it is
 * allocated (kept entries are evicted to make room), a job takes its row only when what all
 * admitted jobs may still allocate fits beside it (in arrival order: a job that waits is not
 * overtaken by a smaller one), and a finished row is handed to the store straight from the pool,
 * inside the step, instead of through a copy. Without a bound, live caches are limited only by
 * maxRows and the context, as before.
 */
import { checkContext, type GenerateCallbacks, type GenerateSettings, type Generated, type TokenGenerator } from '../model/generate.ts';
import { CancelledError, throwIfAborted } from '../model/errors.ts';
import type { FromageGraphs } from '../model/graphs.ts';
import type { KvCache } from '../model/kv-cache.ts';
import type { AssembledPrompt } from '../model/prompt.ts';
import type { KvMemory, KvReader, KvStore, PositionKey, PrefixMatch } from './kv-types.ts';
import { liveBound, positionBytes, type LiveJob } from './kv-memory.ts';
import { Sequence } from './sequence.ts';
import { SlotPool } from './slot-pool.ts';

/**
 * Positions per prefill call while other rows may be answering: each chunk holds up their next
 * step, and a 256-position chunk of the 6.7B shape takes ~18 s on a 2-core machine. Prefill
 * throughput is the same with 64 (bench:batch, docs/runtime.md "Batched decoding").
 */
export const BATCH_PREFILL_CHUNK = 64;

export interface BatcherOptions {
  /** The bundle's graphs (ungated); the batcher gates them itself. */
  readonly graphs: FromageGraphs;
  /** Rows decoded together (FROMAGE_BATCH). */
  readonly maxRows: number;
  readonly maxPositions: number;
  /** Kept caches: a prompt's longest kept prefix is copied in instead of prefilled. */
  readonly store?: KvStore;
  /** Failures of the store (which only cost speed) are reported here. */
  readonly warn?: (message: string) => void;
  /** Default BATCH_PREFILL_CHUNK. */
  readonly prefillChunk?: number;
}

export interface BatcherStats {
  readonly rows: number;
  readonly maxRows: number;
  /** Jobs waiting for a row (for a free one, or for memory: see waitingForMemory). */
  readonly waiting: number;
  /** Of those, jobs waiting while a row is free: for live KV memory under the budget. */
  readonly waitingForMemory: number;
  /** Bytes of live KV caches: the batch's rows and the caches of prompts being prefilled. */
  readonly liveBytes: number;
  /** The budget live and kept caches share (FROMAGE_KV_CACHE_MB); 0 when live caches are not bounded. */
  readonly memoryBudgetBytes: number;
  readonly steps: number;
  /** Sum over steps of the rows decoded: rowSteps / steps is the mean batch occupancy. */
  readonly rowSteps: number;
}

/** Runs calls one at a time, in the order they were asked for. */
class FifoGate {
  private tail: Promise<unknown> = Promise.resolve();
  run = <T>(call: () => Promise<T>): Promise<T> => {
    const result = this.tail.then(call);
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  };
}

/**
 * At most `size` holders, and a newcomer only when `fits` says the holders and it fit together
 * (always when it would be alone); waiters are served in arrival order (the first one that does
 * not fit holds the others back); an aborted waiter leaves the line. pump() looks again after
 * the holders' needs shrank.
 */
class Admission<T> {
  readonly holders = new Set<T>();
  private readonly waiters: { job: T; grant: () => void }[] = [];
  constructor(
    private readonly size: number,
    private readonly fits: (holders: ReadonlySet<T>, job: T) => boolean,
  ) {}

  get waiting(): number {
    return this.waiters.length;
  }

  /** Waiters held back by `fits` while a place is free. */
  get waitingForMemory(): number {
    return this.holders.size < this.size ? this.waiters.length : 0;
  }

  private admissible(job: T): boolean {
    return this.holders.size < this.size && (this.holders.size === 0 || this.fits(this.holders, job));
  }

  acquire(job: T, signal?: AbortSignal): Promise<() => void> {
    const release = once(() => {
      this.holders.delete(job);
      this.pump();
    });
    if (this.waiters.length === 0 && this.admissible(job)) {
      this.holders.add(job);
      return Promise.resolve(release);
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        job,
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
      };
      const onAbort = (): void => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new CancelledError());
        // The next one may fit where this one did not.
        if (i === 0) this.pump();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  pump(): void {
    while (this.waiters.length > 0 && this.admissible(this.waiters[0].job)) {
      const next = this.waiters.shift()!;
      this.holders.add(next.job);
      next.grant();
    }
  }
}

function once(f: () => void): () => void {
  let done = false;
  return () => {
    if (!done) f();
    done = true;
  };
}

interface Row {
  readonly seq: Sequence;
  /** The token this row feeds at the next step. */
  token: number;
  readonly keys?: readonly PositionKey[];
  readonly signal?: AbortSignal;
  readonly resolve: (g: Generated) => void;
  readonly reject: (e: unknown) => void;
  error?: unknown;
}

export class Batcher {
  /** The graphs with every decoder call taken through the gate: for log-likelihood and prompt embeddings too. */
  readonly graphs: FromageGraphs;
  private readonly raw: FromageGraphs;
  private readonly gate = new FifoGate();
  private readonly pool: SlotPool;
  private readonly rows: Row[] = [];
  private readonly admission: Admission<LiveJob>;
  /** The budget live caches count in (the store's), when it bounds them. */
  private readonly memory: KvMemory | undefined;
  /** Bytes of one position of a live cache. */
  private readonly positionBytes: number;
  private liveBytes = 0;
  private looping = false;
  /** Caches being handed to the store: a match waits for them, so a next turn finds its last one. */
  private readonly keeping = new Set<Promise<void>>();
  private steps = 0;
  private rowSteps = 0;

  constructor(private readonly o: BatcherOptions) {
    this.raw = o.graphs;
    this.graphs = o.graphs.withGate(this.gate.run, o.prefillChunk ?? BATCH_PREFILL_CHUNK);
    const cache = o.graphs.emptyCache();
    const memory = o.store?.memory;
    this.memory = memory && memory.budgetBytes > 0 ? memory : undefined;
    this.positionBytes = positionBytes(cache.shape);
    this.pool = new SlotPool(cache.shape, o.maxRows, { memory: { grow: (n) => this.grow(n), shrink: (n) => this.shrink(n) }, tightRows: this.memory !== undefined });
    const budget = this.memory?.budgetBytes;
    this.admission = new Admission<LiveJob>(o.maxRows, (holders, job) => budget === undefined || liveBound(cache.shape, this.pool, [...holders, job]) <= budget);
  }

  stats(): BatcherStats {
    return {
      rows: this.rows.length,
      maxRows: this.o.maxRows,
      waiting: this.admission.waiting,
      waitingForMemory: this.admission.waitingForMemory,
      liveBytes: this.liveBytes,
      memoryBudgetBytes: this.memory?.budgetBytes ?? 0,
      steps: this.steps,
      rowSteps: this.rowSteps,
    };
  }

  /** Counts live bytes (and, under a budget, makes room for them among the kept caches). */
  private grow(bytes: number): void {
    this.liveBytes += bytes;
    this.memory?.growLive(bytes);
  }

  private shrink(bytes: number): void {
    this.liveBytes -= bytes;
    this.memory?.shrinkLive(bytes);
  }

  /** A TokenGenerator (src/model/fromage.ts) answering through the batch. */
  readonly generate: TokenGenerator = async (prompt, s, cb) => {
    checkContext(prompt.length, s.numWords, s.maxPositions);
    throwIfAborted(cb.signal);
    const job: LiveJob = { prompt: prompt.length, end: prompt.length + s.numWords, joined: false };
    const release = await this.admission.acquire(job, cb.signal);
    try {
      return await this.run(prompt, s, cb, job);
    } finally {
      release();
    }
  };

  private async run(prompt: AssembledPrompt, s: GenerateSettings, cb: GenerateCallbacks, job: LiveJob): Promise<Generated> {
    const keys = cb.keys !== undefined && cb.keys.length === prompt.length ? cb.keys : undefined;
    // Looked up before the prompt's cache is counted: the match is then the most recently used
    // kept entry, the last one that counting the cache would evict.
    const match = await this.findPrefix(keys);
    const cache = this.graphs.emptyCache();
    const cacheBytes = prompt.length * this.positionBytes;
    this.grow(cacheBytes);
    let held = true;
    const drop = (): void => {
      if (!held) return;
      held = false;
      this.shrink(cacheBytes);
      job.joined = true; // its prefill cache is gone: admission need not count it any more
      this.admission.pump();
    };
    try {
      cache.preallocate(prompt.length);
      const reused = await this.restore(cache, match);
      this.o.store?.notePrefilled(prompt.length - reused);
      const H = this.graphs.hidden;
      const step = await this.graphs.decode(prompt.embeds.subarray(reused * H), cache, 1, cb.signal);
      const seq = new Sequence(s, cb);
      const token = seq.advance(step.logits);
      if (token === undefined) {
        if (keys) {
          if (this.memory) await this.keepNow(keys, cache);
          else this.keepLater(keys, cache);
        }
        return seq.result();
      }
      return await new Promise<Generated>((resolve, reject) => {
        const row: Row = { seq, token, keys, signal: cb.signal, resolve, reject };
        this.gate
          .run(async () => {
            this.pool.join(cache, s.numWords);
            // Counted out by drop(): its memory must go too, though this function holds `cache` until the answer ends.
            cache.release();
            drop();
            this.rows.push(row);
            this.kick();
          })
          .catch(reject);
      });
    } finally {
      drop();
    }
  }

  /** The longest kept prefix of `keys` (failures of the store only cost the reuse). */
  private async findPrefix(keys: readonly PositionKey[] | undefined): Promise<PrefixMatch | undefined> {
    const store = this.o.store;
    if (!store || !keys || keys.length < 2) return undefined;
    await Promise.all(this.keeping);
    try {
      const match = await store.match(keys, keys.length - 1);
      return match && match.length > 0 ? match : undefined;
    } catch (err) {
      this.o.warn?.(`kept KV cache not reused (${err instanceof Error ? err.message : String(err)}); prefilling the whole prompt`);
      return undefined;
    }
  }

  /** Copies a kept prefix into `cache`; returns the positions reused. */
  private async restore(cache: KvCache, match: PrefixMatch | undefined): Promise<number> {
    if (!match) return 0;
    try {
      await cache.restorePrefix(match.length, (into) => match.copyInto(into));
      return match.length;
    } catch (err) {
      this.o.warn?.(`kept KV cache not reused (${err instanceof Error ? err.message : String(err)}); prefilling the whole prompt`);
      // restorePrefix sets the length only once the copy succeeded: the cache is still empty.
      return 0;
    }
  }

  /**
   * Gives a finished sequence's cache to the store and waits for it (under a memory budget: the
   * cache is not copied first, so it is read while it is still counted).
   */
  private async keepNow(keys: readonly PositionKey[], from: KvReader): Promise<void> {
    await this.o.store?.insert(keys, from).catch((err: unknown) => this.o.warn?.(`could not keep a KV cache (${err instanceof Error ? err.message : String(err)})`));
  }

  /** Offers a finished sequence's cache to the store without making anyone wait for it. */
  private keepLater(keys: readonly PositionKey[], from: KvReader): void {
    const store = this.o.store;
    if (!store) return;
    const kept: Promise<void> = store
      .insert(keys, from)
      .catch((err: unknown) => this.o.warn?.(`could not keep a KV cache (${err instanceof Error ? err.message : String(err)})`))
      .finally(() => this.keeping.delete(kept));
    this.keeping.add(kept);
  }

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    void this.loop();
  }

  private async loop(): Promise<void> {
    for (;;) {
      // Checked and cleared in one synchronous stretch: a row joining later starts a new loop.
      if (this.rows.length === 0) {
        this.looping = false;
        return;
      }
      await this.gate.run(() => this.step());
    }
  }

  /** One decoder call for every row; runs inside the gate. */
  private async step(): Promise<void> {
    // A cancelled answer leaves before the call rather than after it.
    for (const row of [...this.rows]) if (row.signal?.aborted) await this.leave(row, new CancelledError());
    const n = this.rows.length;
    if (n === 0) return;
    let out;
    try {
      const embeds = await this.raw.embedTokens(this.rows.map((r) => r.token));
      out = await this.raw.decodeStep(embeds, this.pool);
    } catch (err) {
      for (const row of [...this.rows]) await this.leave(row, err);
      return;
    }
    this.steps++;
    this.rowSteps += n;
    const V = this.raw.vocab;
    const E = this.raw.embDim;
    const done: Row[] = [];
    this.rows.forEach((row, i) => {
      try {
        const next = row.seq.advance(out.logits.slice(i * V, (i + 1) * V), out.retEmbeddings.slice(i * E, (i + 1) * E));
        if (next === undefined) done.push(row);
        else row.token = next;
      } catch (err) {
        row.error = err;
        done.push(row);
      }
    });
    for (const row of done) await this.leave(row, row.error);
  }

  /**
   * Frees a row (a finished one's cache given to the store first: straight from the pool under
   * a memory budget, else copied out and offered in the background) and settles its job. Runs
   * inside the gate, so the pool does not change while the store reads it.
   */
  private async leave(row: Row, error: unknown): Promise<void> {
    if (!this.rows.includes(row)) return;
    if (error === undefined && row.keys && this.o.store) {
      const keys = [...row.keys, ...row.seq.fedBack];
      const index = this.rows.indexOf(row);
      if (this.memory) await this.keepNow(keys, this.pool.reader(index));
      else this.keepLater(keys, this.pool.snapshot(index));
    }
    const index = this.rows.indexOf(row);
    const moved = this.pool.leave(index);
    if (moved !== undefined) this.rows[index] = this.rows[moved];
    this.rows.pop();
    if (error === undefined) row.resolve(row.seq.result());
    else row.reject(error);
    // The pool may have shrunk: a job waiting for memory may fit now.
    this.admission.pump();
  }

  /** Writes what the store keeps (on shutdown). Jobs must have ended (their signals aborted). */
  async close(): Promise<void> {
    await this.gate.run(async () => undefined);
    await Promise.all(this.keeping);
    await this.o.store?.close();
  }
}
