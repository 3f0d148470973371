/**
 * How many intra-op threads onnxruntime gets when FROMAGE_THREADS is 0 (the default).
 *
 * onnxruntime's own default is one thread per physical core of the whole host, each pinned to
 * its core. It ignores what this process may really use: a container limited by a cgroup CPU
 * quota still gets one pinned thread per host core, and on the shared 2-core development
 * machine the pinned default measured 258 ms/token and 8.7 prefill positions/s against 148 and
 * 14.3 with two unpinned threads (OPT-6.7B shape, int4), and a process allowed one CPU ran
 * 1.7-2.5x slower per token with the default's two threads than with one (docs/runtime.md,
 * "Threads"). So the default here is the number of CPUs this process may run on (its
 * scheduler affinity, which taskset and cpusets narrow), capped by the cgroup CPU quota (v2
 * `cpu.max`, v1 `cpu.cfs_quota_us`), at least 1, passed explicitly, which also leaves the
 * threads unpinned.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';

export interface ThreadChoice {
  readonly threads: number;
  /** Why this count, for the start-up log line. */
  readonly reason: string;
}

export interface CpuProbe {
  /** CPUs in this process's scheduler affinity (os.availableParallelism()). */
  readonly affinity: () => number;
  /** Reads a file as text; throws when it is absent (cgroup files are optional). */
  readonly readFile: (path: string) => string;
  /** Where the cgroup filesystems are mounted. */
  readonly cgroupRoot?: string;
}

const SYSTEM: CpuProbe = { affinity: availableParallelism, readFile: (p) => readFileSync(p, 'utf8') };

function tryRead(probe: CpuProbe, path: string): string | undefined {
  try {
    return probe.readFile(path);
  } catch {
    return undefined;
  }
}

/** CPUs' worth of time a quota of `quota` per `period` microseconds allows (fractions round up). */
function quotaCpus(quota: number, period: number): number | undefined {
  if (!Number.isFinite(quota) || !Number.isFinite(period) || quota <= 0 || period <= 0) return undefined;
  return Math.max(1, Math.ceil(quota / period));
}

/**
 * The tightest cgroup CPU quota over this process's cgroup and its ancestors, in CPUs, or
 * undefined when there is none ("max" / -1 everywhere, or no cgroup files readable).
 */
export function cgroupCpuLimit(probe: CpuProbe = SYSTEM): number | undefined {
  const root = probe.cgroupRoot ?? '/sys/fs/cgroup';
  const membership = tryRead(probe, '/proc/self/cgroup') ?? '';
  const limits: number[] = [];
  // Inside a container the cgroup namespace makes its own cgroup the root, so the mount's
  // top-level file is checked as well as the paths /proc/self/cgroup names.
  const dirsFor = (mount: string, path: string | undefined): string[] => {
    const dirs = [mount];
    if (path && path !== '/') {
      const parts = path.split('/').filter(Boolean);
      for (let i = 1; i <= parts.length; i++) dirs.push(join(mount, ...parts.slice(0, i)));
    }
    return dirs;
  };
  const lines = membership.split('\n').filter(Boolean).map((l) => l.split(':'));
  // cgroup v2: "0::/path", file cpu.max = "<quota|max> <period>".
  const v2 = lines.find((l) => l[0] === '0' && l[1] === '');
  const v2Mount = tryRead(probe, join(root, 'cgroup.controllers')) !== undefined ? root : join(root, 'unified');
  for (const dir of dirsFor(v2Mount, v2?.[2])) {
    const text = tryRead(probe, join(dir, 'cpu.max'));
    if (!text) continue;
    const [quota, period] = text.trim().split(/\s+/);
    const cpus = quota === 'max' ? undefined : quotaCpus(Number(quota), Number(period ?? '100000'));
    if (cpus !== undefined) limits.push(cpus);
  }
  // cgroup v1: the controller list names "cpu" (often "cpu,cpuacct"); files cpu.cfs_quota_us / cpu.cfs_period_us.
  const v1 = lines.find((l) => l[1]?.split(',').includes('cpu'));
  for (const mount of [join(root, 'cpu'), join(root, 'cpu,cpuacct')]) {
    for (const dir of dirsFor(mount, v1?.[2])) {
      const quota = tryRead(probe, join(dir, 'cpu.cfs_quota_us'));
      if (!quota) continue;
      const cpus = quotaCpus(Number(quota.trim()), Number(tryRead(probe, join(dir, 'cpu.cfs_period_us'))?.trim() ?? '100000'));
      if (cpus !== undefined) limits.push(cpus);
    }
  }
  return limits.length > 0 ? Math.min(...limits) : undefined;
}

/** CPUs this process may use: its affinity, capped by the cgroup quota. */
export function usableCpus(probe: CpuProbe = SYSTEM): ThreadChoice {
  const affinity = Math.max(1, Math.floor(probe.affinity()));
  const quota = cgroupCpuLimit(probe);
  if (quota !== undefined && quota < affinity) return { threads: quota, reason: `the cgroup CPU quota allows ${quota} of the ${affinity} CPUs this process may run on` };
  return { threads: affinity, reason: `${affinity} CPU${affinity === 1 ? '' : 's'} available to this process${quota !== undefined ? ` (cgroup quota ${quota})` : ''}` };
}

/** The intra-op thread count to use: `requested` when positive (FROMAGE_THREADS), else the usable CPUs. */
export function resolveThreads(requested: number | undefined, probe: CpuProbe = SYSTEM): ThreadChoice {
  if (requested !== undefined && requested > 0) return { threads: Math.floor(requested), reason: 'FROMAGE_THREADS' };
  return usableCpus(probe);
}

/** The start-up log line. */
export function describeThreads(choice: ThreadChoice): string {
  return `onnxruntime intra-op threads: ${choice.threads} (${choice.reason === 'FROMAGE_THREADS' ? 'set by FROMAGE_THREADS' : `FROMAGE_THREADS=0: ${choice.reason}`})`;
}
