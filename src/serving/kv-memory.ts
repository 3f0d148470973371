/**
 * The one KV memory budget (FROMAGE_KV_CACHE_MB when > 0): live caches (the batch's rows and
 * the caches of prompts being prefilled) come first, kept caches get what is left. Live memory
 * is counted as it is allocated (the store evicts kept entries to make room: KvMemory in
 * kv-types.ts) and admitted ahead of time: a job takes its row only when what every admitted
 * job may still allocate fits (liveBound), so live memory stays within the budget without ever
 * evicting a live cache; a job alone is always admitted, and the start-time check
 * (kv-config.ts) makes sure one job alone fits (oneJobLiveBytes).
 */
import type { KvShape } from './kv-types.ts';

/** Bytes one position of a live (float32) cache takes: key and value, every layer and head. */
export function positionBytes(shape: KvShape): number {
  return 2 * shape.layers * shape.heads * shape.headDim * 4;
}

/** What an admitted job may allocate: its prompt's cache until it joins the batch, then its row. */
export interface LiveJob {
  /** Prompt positions (its own prefill cache). */
  readonly prompt: number;
  /** Positions its row may reach: the prompt plus the tokens it may feed back. */
  readonly end: number;
  /** True once it joined the batch (its prefill cache is gone). */
  joined: boolean;
}

/** The pool's allocation now: rows and capacity of its buffers. */
export interface PoolState {
  readonly allocatedRows: number;
  readonly capacity: number;
}

/**
 * An upper bound of the live bytes `jobs` may hold from now until they end, given the pool's
 * state (a pool that grows rows to exactly what it holds, slot-pool.ts `tightRows`): the pool at
 * its widest (rows x the longest row, or its capacity now when larger), one layer buffer more
 * while it is being resized (it resizes one layer at a time), and the prefill caches of the
 * jobs that have not joined yet. A finished row's cache goes to the kept store straight from the
 * pool, so leaving takes no live copy.
 */
export function liveBound(shape: KvShape, pool: PoolState, jobs: Iterable<LiveJob>): number {
  let n = 0;
  let end = 0;
  let prefill = 0;
  for (const j of jobs) {
    n++;
    end = Math.max(end, j.end);
    if (!j.joined) prefill += j.prompt;
  }
  const per = positionBytes(shape);
  const rows = Math.max(pool.allocatedRows, n);
  const cap = Math.max(pool.capacity, end);
  const poolBytes = rows * cap * per;
  return poolBytes + poolBytes / (2 * shape.layers) + prefill * per;
}

/** Live bytes one conversation at full context may need alone: its prefill cache, then its row while it joins. */
export function oneJobLiveBytes(shape: KvShape, maxPositions: number): number {
  return Math.ceil(liveBound(shape, { allocatedRows: 0, capacity: 0 }, [{ prompt: maxPositions, end: maxPositions, joined: false }]));
}
