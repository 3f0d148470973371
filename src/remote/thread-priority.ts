/**
 * `fromage worker` runs every thread of its process except the event loop's at a lower
 * scheduling priority (nice +10 by default, `--compute-nice`): onnxruntime's compute thread and
 * pool, the model's worker thread, V8's GC and compiler helpers, libuv's and libvips' pools.
 *
 * Why: the event loop is what takes a job from Redis (BZPOPMIN wake-up, moveToActive) and
 * reports its start; it needs a CPU for well under a millisecond per job, while the compute and
 * the GC helpers that clean up after it (V8 runs four, at once) keep every core busy. Measured
 * with `npm run bench:workers` on the shared 2-core development machine (load average ~5 from
 * other work; nice 0 and 10 interleaved in the same runs, 100 jobs each): the workers' event-loop
 * threads waited on the run queue 9.5-14.6 ms per job at nice 0 and 5.6-6.8 ms at nice 10 (one
 * worker; two: 22.9-29.1 against 14.0-15.4), and gateway-enqueue-to-job-start p99 went from
 * 23-29 ms to 7-10 ms while every core computed, from 9-14 ms to 4.6 ms for jobs sent one at a
 * time to idle workers; answers/s unchanged within the noise. Nice only matters when threads
 * compete for a core: an otherwise idle machine runs the compute exactly as fast. It does let
 * other programs at nice 0 on the same machine get ahead of the model (on one machine with the
 * gateway and Redis that is the point; beside other heavy work, `--compute-nice 0`).
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
