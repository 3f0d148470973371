/**
 * `fromage worker` runs every thread of its process except the event loop's at a lower
 * scheduling priority (nice +10 by default, `--compute-nice`): onnxruntime's compute thread and
 * pool, the model's worker thread, V8's GC and compiler helpers, libuv's and libvips' pools.
 *
 * Why: the event loop is what takes a job from Redis (BZPOPMIN wake-up, moveToActive) and
 * reports its start; it needs a CPU for well under a millisecond per job, while the compute
 * and the GC helpers that clean up after it keep every core busy. On the 2-core development
 * machine, with the model and its GC helpers runnable, the worker's event-loop thread waited on
 * the run queue for ~1.7 s of a 12 s run (/proc schedstat) and the gateway-enqueue-to-job-start
 * p99 was 10-15 ms (p50 ~2 ms); with the other threads at nice 10 it was ~6-7 ms, throughput
 * unchanged (README "Several machines"). Nice only matters when threads compete for a core: an
 * otherwise idle machine runs the compute exactly as fast.
 *
 * Linux only: there setpriority() on a thread id changes that one thread (POSIX would say the
 * process), and a thread inherits its creator's nice value, so pools created later by an
 * already lowered thread start lowered. Threads created later by the event-loop thread (a model
 * worker thread restarted after a crash, libuv's pool on first use) are caught by calling this
 * again: the worker does on every heartbeat. It only ever raises a nice value, which needs no
 * privilege; a thread already at or above the target (an operator's own `renice`) is left alone.
 */
import { readdirSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';

/** What `fromage worker` uses unless `--compute-nice` says otherwise. */
export const DEFAULT_COMPUTE_NICE = 10;

export interface ThreadProbe {
  readonly platform: NodeJS.Platform;
  /** The event loop's thread id (on Linux the process id). */
  readonly mainThread: number;
  /** This process's thread ids. */
  readonly threads: () => number[];
  readonly getNice: (tid: number) => number;
  readonly setNice: (tid: number, nice: number) => void;
}

const SYSTEM: ThreadProbe = {
  platform: process.platform,
  mainThread: process.pid,
  threads: () =>
    readdirSync('/proc/self/task')
      .map(Number)
      .filter((t) => Number.isInteger(t) && t > 0),
  getNice: (tid) => getPriority(tid),
  setNice: (tid, nice) => setPriority(tid, nice),
};

export interface LowerResult {
  /** False where threads cannot be told apart (not Linux): nothing was changed. */
  readonly supported: boolean;
  /** Threads whose nice value this call raised. */
  readonly lowered: number[];
}

/** Raises the nice value of every thread but the event loop's to `nice` (0 does nothing). */
export function lowerOtherThreads(nice: number, probe: ThreadProbe = SYSTEM): LowerResult {
  if (!Number.isInteger(nice) || nice < 0 || nice > 19) throw new RangeError(`compute nice must be an integer from 0 to 19, not ${nice}`);
  if (probe.platform !== 'linux') return { supported: false, lowered: [] };
  const lowered: number[] = [];
  if (nice === 0) return { supported: true, lowered };
  for (const tid of probe.threads()) {
    if (tid === probe.mainThread) continue;
    try {
      if (probe.getNice(tid) >= nice) continue;
      probe.setNice(tid, nice);
      lowered.push(tid);
    } catch {
      // The thread ended between the listing and the call (ESRCH): nothing to lower.
    }
  }
  return { supported: true, lowered };
}

/** Parses `--compute-nice`: an integer from 0 (leave priorities alone) to 19. */
export function parseComputeNice(text: string | undefined): number {
  if (text === undefined) return DEFAULT_COMPUTE_NICE;
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n > 19) throw new RangeError(`--compute-nice must be an integer from 0 (leave thread priorities alone) to 19, not "${text}"`);
  return n;
}
