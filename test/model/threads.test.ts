import { describe, expect, it } from 'vitest';
import { cgroupCpuLimit, describeThreads, resolveThreads, usableCpus, type CpuProbe } from '../../src/model/threads.ts';
import { sessionOptions } from '../../src/model/session.ts';

/** A probe over an in-memory file system. */
function probe(affinity: number, files: Record<string, string>): CpuProbe {
  return {
    affinity: () => affinity,
    readFile: (path) => {
      if (path in files) return files[path];
      throw Object.assign(new Error(`ENOENT: ${path}`), { code: 'ENOENT' });
    },
  };
}

describe('threads by default', () => {
  it('uses every CPU of the affinity when no cgroup quota applies', () => {
    const p = probe(8, { '/proc/self/cgroup': '0::/\n', '/sys/fs/cgroup/cgroup.controllers': 'cpu memory', '/sys/fs/cgroup/cpu.max': 'max 100000\n' });
    expect(cgroupCpuLimit(p)).toBeUndefined();
    expect(resolveThreads(0, p).threads).toBe(8);
    expect(resolveThreads(undefined, p).threads).toBe(8);
  });

  it('is capped by a cgroup v2 quota (fractions round up), the container case', () => {
    const p = probe(64, {
      '/proc/self/cgroup': '0::/system.slice/fromage.service\n',
      '/sys/fs/cgroup/cgroup.controllers': 'cpu memory',
      '/sys/fs/cgroup/cpu.max': 'max 100000\n',
      '/sys/fs/cgroup/system.slice/fromage.service/cpu.max': '250000 100000\n',
    });
    expect(cgroupCpuLimit(p)).toBe(3);
    const c = usableCpus(p);
    expect(c.threads).toBe(3);
    expect(describeThreads(c)).toMatch(/threads: 3 \(FROMAGE_THREADS=0: the cgroup CPU quota allows 3 of the 64 CPUs/);
  });

  it('takes the tightest quota among the cgroup and its ancestors', () => {
    const p = probe(16, {
      '/proc/self/cgroup': '0::/a/b\n',
      '/sys/fs/cgroup/cgroup.controllers': 'cpu',
      '/sys/fs/cgroup/a/cpu.max': '200000 100000',
      '/sys/fs/cgroup/a/b/cpu.max': '800000 100000',
    });
    expect(cgroupCpuLimit(p)).toBe(2);
  });

  it('reads a cgroup v1 CFS quota', () => {
    const p = probe(32, {
      '/proc/self/cgroup': '4:memory:/x\n2:cpu,cpuacct:/docker/abc\n',
      '/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us': '150000\n',
      '/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us': '100000\n',
    });
    expect(cgroupCpuLimit(p)).toBe(2);
    expect(resolveThreads(0, p).threads).toBe(2);
  });

  it('ignores an unlimited v1 quota (-1) and unreadable files', () => {
    expect(cgroupCpuLimit(probe(4, { '/proc/self/cgroup': '1:cpu:/\n', '/sys/fs/cgroup/cpu/cpu.cfs_quota_us': '-1\n', '/sys/fs/cgroup/cpu/cpu.cfs_period_us': '100000\n' }))).toBeUndefined();
    expect(cgroupCpuLimit(probe(4, {}))).toBeUndefined();
    expect(resolveThreads(0, probe(4, {})).threads).toBe(4);
  });

  it('follows the affinity when it is below the quota (taskset, cpuset)', () => {
    const p = probe(2, { '/proc/self/cgroup': '0::/\n', '/sys/fs/cgroup/cgroup.controllers': '', '/sys/fs/cgroup/cpu.max': '800000 100000' });
    expect(resolveThreads(0, p)).toMatchObject({ threads: 2 });
  });

  it('never goes below one thread', () => {
    expect(resolveThreads(0, probe(0, {})).threads).toBe(1);
  });

  it('FROMAGE_THREADS > 0 wins and says so', () => {
    const c = resolveThreads(3, probe(64, {}));
    expect(c.threads).toBe(3);
    expect(describeThreads(c)).toBe('onnxruntime intra-op threads: 3 (set by FROMAGE_THREADS)');
  });

  it('session options pass the count explicitly, or nothing for onnxruntime-default', () => {
    expect(sessionOptions({ threads: 5 }).intraOpNumThreads).toBe(5);
    expect(sessionOptions({}).intraOpNumThreads).toBe(resolveThreads(0).threads);
    expect(sessionOptions({ threads: 'onnxruntime-default' }).intraOpNumThreads).toBeUndefined();
  });
});
