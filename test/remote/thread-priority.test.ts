/**
 * `fromage worker` lowers the priority of every thread but its event loop's (thread-priority.ts):
 * the choice of threads with a fake probe, then for real on Linux in a child process with worker
 * threads, reading each thread's nice value from /proc.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { DEFAULT_COMPUTE_NICE, lowerOtherThreads, parseComputeNice, type ThreadProbe } from '../../src/remote/thread-priority.ts';

function fakeProbe(nice: Record<number, number>, o: { platform?: NodeJS.Platform; gone?: number[] } = {}): ThreadProbe & { nice: Record<number, number> } {
  return {
    nice,
    platform: o.platform ?? 'linux',
    mainThread: 100,
    threads: () => Object.keys(nice).map(Number),
    getNice: (tid) => {
      if (o.gone?.includes(tid)) throw Object.assign(new Error('no such process'), { code: 'ESRCH' });
      return nice[tid];
    },
    setNice: (tid, n) => {
      nice[tid] = n;
    },
  };
}

describe('lowerOtherThreads', () => {
  it('raises the nice value of every thread but the event loop, never lowers one, and skips threads that ended', () => {
    const p = fakeProbe({ 100: 0, 101: 0, 102: 15, 103: 5, 104: 0 }, { gone: [104] });
    const r = lowerOtherThreads(10, p);
    expect(r).toEqual({ supported: true, lowered: [101, 103] });
    expect(p.nice).toEqual({ 100: 0, 101: 10, 102: 15, 103: 10, 104: 0 });
    // Called again (each heartbeat), only threads started since are touched.
    p.nice[105] = 0;
    expect(lowerOtherThreads(10, p).lowered).toEqual([105]);
  });

  it('changes nothing with 0, or where threads cannot be told apart', () => {
    const p = fakeProbe({ 100: 0, 101: 0 });
    expect(lowerOtherThreads(0, p)).toEqual({ supported: true, lowered: [] });
    const mac = fakeProbe({ 100: 0, 101: 0 }, { platform: 'darwin' });
    expect(lowerOtherThreads(10, mac)).toEqual({ supported: false, lowered: [] });
    expect(p.nice[101]).toBe(0);
    expect(mac.nice[101]).toBe(0);
  });

  it('parses --compute-nice', () => {
    expect(parseComputeNice(undefined)).toBe(DEFAULT_COMPUTE_NICE);
    expect(parseComputeNice('0')).toBe(0);
    expect(parseComputeNice('19')).toBe(19);
    for (const bad of ['-1', '20', '1.5', 'high', '']) expect(() => parseComputeNice(bad)).toThrow(/--compute-nice must be an integer from 0/);
    expect(() => lowerOtherThreads(20)).toThrow(RangeError);
  });

  it.runIf(process.platform === 'linux')('on Linux lowers real threads: worker threads and V8 helpers go to nice 10, the event loop stays, a thread started later joins on the next call', async () => {
    const script = `
      import { readdirSync, readFileSync } from 'node:fs';
      import { Worker } from 'node:worker_threads';
      import { lowerOtherThreads } from './src/remote/thread-priority.ts';
      const nice = () => Object.fromEntries(readdirSync('/proc/self/task').map((t) => [t, Number(readFileSync('/proc/self/task/' + t + '/stat', 'utf8').split(') ')[1].split(' ')[16])]));
      const spin = 'setInterval(() => {}, 1000)';
      const started = (w) => new Promise((r) => w.once('online', r));
      const a = new Worker(spin, { eval: true });
      await started(a);
      const first = lowerOtherThreads(10);
      const afterFirst = nice();
      const b = new Worker(spin, { eval: true });
      await started(b);
      const beforeSecond = nice();
      const second = lowerOtherThreads(10);
      const afterSecond = nice();
      console.log(JSON.stringify({ pid: process.pid, first, afterFirst, beforeSecond, second, afterSecond }));
      process.exit(0);
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await new Promise((r) => child.once('exit', r));
    const r = JSON.parse(out.trim().split('\n').at(-1)!) as {
      pid: number;
      first: { lowered: number[] };
      afterFirst: Record<string, number>;
      beforeSecond: Record<string, number>;
      second: { lowered: number[] };
      afterSecond: Record<string, number>;
    };
    const main = String(r.pid);
    expect(r.afterFirst[main]).toBe(0);
    const others = Object.entries(r.afterFirst).filter(([t]) => t !== main);
    expect(others.length).toBeGreaterThanOrEqual(2);
    expect(others.every(([, n]) => n === 10)).toBe(true);
    // The second worker thread (created by the event-loop thread) started at 0, and the next call caught it.
    const fresh = Object.keys(r.beforeSecond).filter((t) => !(t in r.afterFirst));
    expect(fresh.some((t) => r.beforeSecond[t] === 0)).toBe(true);
    expect(r.second.lowered.length).toBeGreaterThan(0);
    expect(r.afterSecond[main]).toBe(0);
    expect(Object.entries(r.afterSecond).filter(([t]) => t !== main).every(([, n]) => n === 10)).toBe(true);
  }, 60_000);
});
