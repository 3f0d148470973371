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
 */
import { checkContext, type GenerateCallbacks, type GenerateSettings, type Generated, type TokenGenerator } from '../model/generate.ts';
import { CancelledError, throwIfAborted } from '../model/errors.ts';
import type { FromageGraphs } from '../model/graphs.ts';
import type { KvCache } from '../model/kv-cache.ts';
import type { AssembledPrompt } from '../model/prompt.ts';
import type { KvReader, KvStore, PositionKey } from './kv-types.ts';
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
  /** Jobs waiting for a row. */
  readonly waiting: number;
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

/** At most `size` holders; waiters are served in arrival order; an aborted waiter leaves the line. */
class Admission {
  private held = 0;
  private readonly waiters: { grant: () => void; reject: (e: Error) => void }[] = [];
  constructor(private readonly size: number) {}

  get waiting(): number {
    return this.waiters.length;
  }

  acquire(signal?: AbortSignal): Promise<() => void> {
    const release = (): void => {
      const next = this.waiters.shift();
      if (next) next.grant();
      else this.held--;
    };
    if (this.held < this.size) {
      this.held++;
      return Promise.resolve(once(release));
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(once(release));
        },
        reject,
      };
      const onAbort = (): void => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new CancelledError());
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
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
  private readonly admission: Admission;
  private looping = false;
  /** Caches being handed to the store: a match waits for them, so a next turn finds its last one. */
  private readonly keeping = new Set<Promise<void>>();
  private steps = 0;
  private rowSteps = 0;

  constructor(private readonly o: BatcherOptions) {
    this.raw = o.graphs;
    this.graphs = o.graphs.withGate(this.gate.run, o.prefillChunk ?? BATCH_PREFILL_CHUNK);
    const cache = o.graphs.emptyCache();
    this.pool = new SlotPool(cache.shape, o.maxRows);
    this.admission = new Admission(o.maxRows);
  }

  stats(): BatcherStats {
    return { rows: this.rows.length, maxRows: this.o.maxRows, waiting: this.admission.waiting, steps: this.steps, rowSteps: this.rowSteps };
  }

  /** A TokenGenerator (src/model/fromage.ts) answering through the batch. */
  readonly generate: TokenGenerator = async (prompt, s, cb) => {
    checkContext(prompt.length, s.numWords, s.maxPositions);
    throwIfAborted(cb.signal);
    const release = await this.admission.acquire(cb.signal);
    try {
      return await this.run(prompt, s, cb);
    } finally {
      release();
    }
  };

  private async run(prompt: AssembledPrompt, s: GenerateSettings, cb: GenerateCallbacks): Promise<Generated> {
    const keys = cb.keys !== undefined && cb.keys.length === prompt.length ? cb.keys : undefined;
    const cache = this.graphs.emptyCache();
    cache.preallocate(prompt.length);
    const reused = await this.restore(cache, keys);
    this.o.store?.notePrefilled(prompt.length - reused);
    const H = this.graphs.hidden;
    const step = await this.graphs.decode(prompt.embeds.subarray(reused * H), cache, 1, cb.signal);
    const seq = new Sequence(s, cb);
    const token = seq.advance(step.logits);
    if (token === undefined) {
      if (keys) this.keepLater(keys, cache);
      return seq.result();
    }
    return new Promise<Generated>((resolve, reject) => {
      const row: Row = { seq, token, keys, signal: cb.signal, resolve, reject };
      this.gate
        .run(async () => {
          this.pool.join(cache, s.numWords);
          this.rows.push(row);
          this.kick();
        })
        .catch(reject);
    });
  }

  /** Copies the longest kept prefix of `keys` into `cache`; returns the positions reused. */
  private async restore(cache: KvCache, keys: readonly PositionKey[] | undefined): Promise<number> {
    const store = this.o.store;
    if (!store || !keys || keys.length < 2) return 0;
    await Promise.all(this.keeping);
    try {
      const match = await store.match(keys, keys.length - 1);
      if (!match || match.length === 0) return 0;
      await cache.restorePrefix(match.length, (into) => match.copyInto(into));
      return match.length;
    } catch (err) {
      this.o.warn?.(`kept KV cache not reused (${err instanceof Error ? err.message : String(err)}); prefilling the whole prompt`);
      // restorePrefix sets the length only once the copy succeeded: the cache is still empty.
      return 0;
    }
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
    for (const row of [...this.rows]) if (row.signal?.aborted) this.leave(row, new CancelledError());
    const n = this.rows.length;
    if (n === 0) return;
    let out;
    try {
      const embeds = await this.raw.embedTokens(this.rows.map((r) => r.token));
      out = await this.raw.decodeStep(embeds, this.pool);
    } catch (err) {
      for (const row of [...this.rows]) this.leave(row, err);
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
    for (const row of done) this.leave(row, row.error);
  }

  /** Frees a row (a finished one's cache copied out for the store first) and settles its job. */
  private leave(row: Row, error: unknown): void {
    const index = this.rows.indexOf(row);
    if (index < 0) return;
    if (error === undefined && row.keys && this.o.store) this.keepLater([...row.keys, ...row.seq.fedBack], this.pool.snapshot(index));
    const moved = this.pool.leave(index);
    if (moved !== undefined) this.rows[index] = this.rows[moved];
    this.rows.pop();
    if (error === undefined) row.resolve(row.seq.result());
    else row.reject(error);
  }

  /** Writes what the store keeps (on shutdown). Jobs must have ended (their signals aborted). */
  async close(): Promise<void> {
    await this.gate.run(async () => undefined);
    await Promise.all(this.keeping);
    await this.o.store?.close();
  }
}
