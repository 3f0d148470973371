import { describe, expect, it } from 'vitest';
import { Scheduler, SchedulerRejection, type SchedulerOptions } from '../../src/queue/scheduler.ts';

const base: SchedulerOptions = { concurrency: 1, maxQueued: 100, userRatePerMinute: 600, userBurst: 100, jobTimeoutMs: 5_000, initialRunEstimateMs: 1000 };

/** A job that finishes when `release()` is called, recording when it ran. */
function gate() {
  let release!: () => void;
  const done = new Promise<void>((r) => (release = r));
  return { done, release };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

describe('Scheduler', () => {
  it('runs one job per conversation at a time, in arrival order', async () => {
    const s = new Scheduler({ ...base, concurrency: 4 });
    const order: string[] = [];
    const gates = [gate(), gate(), gate()];
    const jobs = gates.map((g, i) =>
      s.submit({
        conversation: 'c',
        user: `u${i}`,
        run: async () => {
          order.push(`start${i}`);
          await g.done;
          order.push(`end${i}`);
          return i;
        },
      }),
    );
    await tick();
    expect(order).toEqual(['start0']);
    gates[1].release();
    gates[2].release();
    gates[0].release();
    expect(await Promise.all(jobs.map((j) => j.result))).toEqual([0, 1, 2]);
    expect(order).toEqual(['start0', 'end0', 'start1', 'end1', 'start2', 'end2']);
  });

  it('follows a changed slot count (model workers joining or leaving): more start at once, then fewer', async () => {
    const s = new Scheduler({ ...base, concurrency: 1 });
    const gates = Array.from({ length: 5 }, () => gate());
    let running = 0;
    const jobs = gates.map((g, i) =>
      s.submit({
        conversation: `c${i}`,
        user: `u${i}`,
        run: async () => {
          running++;
          await g.done;
          running--;
          return i;
        },
      }),
    );
    await tick();
    expect(running).toBe(1);
    s.setConcurrency(3);
    await tick();
    expect(running).toBe(3);
    s.setConcurrency(0); // no worker left: one slot stays, so jobs wait rather than fail
    expect(s.slots).toBe(1);
    gates[0].release();
    gates[1].release();
    await tick();
    await tick();
    expect(running).toBe(1);
    for (const g of gates) g.release();
    expect(await Promise.all(jobs.map((j) => j.result))).toEqual([0, 1, 2, 3, 4]);
  });

  it('runs different conversations in parallel up to the slot count', async () => {
    const s = new Scheduler({ ...base, concurrency: 2 });
    let running = 0;
    let peak = 0;
    const jobs = Array.from({ length: 6 }, (_, i) =>
      s.submit({
        conversation: `c${i}`,
        user: `u${i}`,
        run: async () => {
          running++;
          peak = Math.max(peak, running);
          await new Promise((r) => setTimeout(r, 5));
          running--;
        },
      }),
    );
    await Promise.all(jobs.map((j) => j.result));
    expect(peak).toBe(2);
  });

  it('is fair across users: a burst from one user does not starve another', async () => {
    const s = new Scheduler({ ...base, concurrency: 1 });
    const order: string[] = [];
    const first = gate();
    const jobs = [
      s.submit({ conversation: 'hold', user: 'z', run: () => first.done }),
      ...Array.from({ length: 5 }, (_, i) => s.submit({ conversation: `a${i}`, user: 'alice', run: async () => void order.push(`alice${i}`) })),
      s.submit({ conversation: 'b0', user: 'bob', run: async () => void order.push('bob0') }),
      s.submit({ conversation: 'b1', user: 'bob', run: async () => void order.push('bob1') }),
    ];
    first.release();
    await Promise.all(jobs.map((j) => j.result));
    expect(order.slice(0, 4)).toEqual(['alice0', 'bob0', 'alice1', 'bob1']);
  });

  it('reports queue positions and ETAs as jobs move up', async () => {
    const s = new Scheduler({ ...base, concurrency: 1, initialRunEstimateMs: 2000 });
    const first = gate();
    const positions: [number, number][] = [];
    const a = s.submit({ conversation: 'a', user: 'a', run: () => first.done });
    const b = s.submit({ conversation: 'b', user: 'b', run: async () => {} });
    const c = s.submit({ conversation: 'c', user: 'c', run: async () => {}, onQueued: (p, eta) => positions.push([p, eta ?? NaN]) });
    expect(positions[0][0]).toBe(2);
    expect(positions[0][1]).toBeGreaterThanOrEqual(4);
    first.release();
    await Promise.all([a.result, b.result, c.result]);
    expect(positions.map((p) => p[0])).toEqual([2, 1]);
  });

  it('gives no ETA before a run was measured unless told a guess, then one from the measured run', async () => {
    let now = 0;
    const { initialRunEstimateMs: _guess, ...unguessed } = base;
    const s = new Scheduler({ ...unguessed, now: () => now });
    const first = gate();
    const seen: [number, number | undefined][] = [];
    const a = s.submit({ conversation: 'a', user: 'a', run: () => first.done });
    const b = s.submit({ conversation: 'b', user: 'b', run: async () => {}, onQueued: (p, eta) => seen.push([p, eta]) });
    expect(seen).toEqual([[1, undefined]]);
    now = 30_000;
    first.release();
    await Promise.all([a.result, b.result]);
    const second = gate();
    const c = s.submit({ conversation: 'a', user: 'a', run: () => second.done });
    const d = s.submit({ conversation: 'd', user: 'd', run: async () => {}, onQueued: (p, eta) => seen.push([p, eta]) });
    // Measured: the running job's remaining time and its own run, from the runs so far.
    expect(seen.at(-1)?.[0]).toBe(1);
    expect(seen.at(-1)?.[1]).toBeGreaterThanOrEqual(21);
    second.release();
    await Promise.all([c.result, d.result]);
  });

  it('rate-limits a user with a retry time', async () => {
    const s = new Scheduler({ ...base, userRatePerMinute: 2, userBurst: 2 });
    const ok = [s.submit({ conversation: 'a', user: 'u', run: async () => 1 }), s.submit({ conversation: 'b', user: 'u', run: async () => 2 })];
    const limited = s.submit({ conversation: 'c', user: 'u', run: async () => 3 });
    await expect(limited.result).rejects.toMatchObject({ reason: 'rate-limited', retryAfterSeconds: 30 });
    await expect(limited.result).rejects.toThrow(/try again in 30 s/);
    expect(await Promise.all(ok.map((j) => j.result))).toEqual([1, 2]);
    // Another user is not affected.
    await expect(s.submit({ conversation: 'd', user: 'v', run: async () => 4 }).result).resolves.toBe(4);
  });

  it('refuses at once with an ETA when the queue is full, and drops nothing silently', async () => {
    const s = new Scheduler({ ...base, maxQueued: 2, initialRunEstimateMs: 3000 });
    const hold = gate();
    const running = s.submit({ conversation: 'r', user: 'r', run: () => hold.done.then(() => 'r') });
    const q1 = s.submit({ conversation: 'a', user: 'a', run: async () => 'a' });
    const q2 = s.submit({ conversation: 'b', user: 'b', run: async () => 'b' });
    const full = s.submit({ conversation: 'c', user: 'c', run: async () => 'c' });
    await expect(full.result).rejects.toMatchObject({ reason: 'busy' });
    await expect(full.result).rejects.toThrow(/busy right now; try again in ~\d+ s/);
    hold.release();
    expect(await Promise.all([running.result, q1.result, q2.result])).toEqual(['r', 'a', 'b']);
  });

  it('times out a job, aborting its signal, and frees the slot only when the work stops', async () => {
    const s = new Scheduler({ ...base, jobTimeoutMs: 30 });
    let sawAbort = false;
    const slow = s.submit({
      conversation: 'a',
      user: 'a',
      run: (signal) =>
        new Promise((_, reject) => {
          signal.addEventListener('abort', () => {
            sawAbort = true;
            setTimeout(() => reject(new Error('stopped')), 20);
          });
        }),
    });
    const next = s.submit({ conversation: 'b', user: 'b', run: async () => s.stats().running });
    await expect(slow.result).rejects.toMatchObject({ reason: 'timeout' });
    expect(sawAbort).toBe(true);
    expect(s.stats().running).toBe(1);
    await expect(next.result).resolves.toBe(1);
  });

  it('cancels a queued job and a running one', async () => {
    const s = new Scheduler(base);
    const hold = gate();
    const running = s.submit({
      conversation: 'a',
      user: 'a',
      run: (signal) => new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted')))),
    });
    const queued = s.submit({ conversation: 'b', user: 'b', run: () => hold.done });
    queued.cancel();
    await expect(queued.result).rejects.toMatchObject({ reason: 'cancelled' });
    expect(s.stats().queued).toBe(0);
    running.cancel();
    await expect(running.result).rejects.toMatchObject({ reason: 'cancelled' });
  });

  it('shuts down: refuses new jobs, fails queued ones with a message, lets running ones finish', async () => {
    const s = new Scheduler(base);
    const hold = gate();
    const running = s.submit({ conversation: 'a', user: 'a', run: () => hold.done.then(() => 'done') });
    const queued = s.submit({ conversation: 'b', user: 'b', run: async () => 'never' });
    const stopping = s.shutdown(1000);
    await expect(queued.result).rejects.toMatchObject({ reason: 'shutting-down' });
    await expect(queued.result).rejects.toThrow(/send it again/);
    await expect(s.submit({ conversation: 'c', user: 'c', run: async () => 1 }).result).rejects.toMatchObject({ reason: 'shutting-down' });
    hold.release();
    await stopping;
    await expect(running.result).resolves.toBe('done');
  });

  it('aborts running jobs that outlast the shutdown grace period', async () => {
    const s = new Scheduler(base);
    const running = s.submit({
      conversation: 'a',
      user: 'a',
      run: (signal) => new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted')))),
    });
    await s.shutdown(20);
    const err = await running.result.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SchedulerRejection);
    expect((err as SchedulerRejection).message).toMatch(/cut short/);
  });

  it('passes job errors through unchanged', async () => {
    const s = new Scheduler(base);
    await expect(s.submit({ conversation: 'a', user: 'a', run: async () => Promise.reject(new Error('engine broke')) }).result).rejects.toThrow('engine broke');
  });

  it('holds a reserved place: a job submitted later in the conversation waits for it', async () => {
    const s = new Scheduler(base);
    const order: string[] = [];
    const place = s.reserve('conv', 'u');
    const later = s.submit({ conversation: 'conv', user: 'u', run: async () => void order.push('later') });
    const other = s.submit({ conversation: 'elsewhere', user: 'v', run: async () => void order.push('other conversation') });
    await other.result;
    await tick();
    expect(order).toEqual(['other conversation']);
    await place.submit({ run: async () => void order.push('reserved') }).result;
    await later.result;
    expect(order).toEqual(['other conversation', 'reserved', 'later']);
    // A released place lets the rest go on.
    const dropped = s.reserve('conv', 'u');
    const after = s.submit({ conversation: 'conv', user: 'u', run: async () => 'ran' });
    dropped.release();
    await expect(after.result).resolves.toBe('ran');
  });

  it('gives a refused reservation\'s place back', async () => {
    const s = new Scheduler({ ...base, userRatePerMinute: 1, userBurst: 1 });
    await s.submit({ conversation: 'a', user: 'u', run: async () => 1 }).result;
    const place = s.reserve('b', 'u');
    const next = s.submit({ conversation: 'b', user: 'v', run: async () => 'next' });
    await expect(place.submit({ run: async () => 2 }).result).rejects.toMatchObject({ reason: 'rate-limited' });
    await expect(next.result).resolves.toBe('next');
  });

  it('queues trusted jobs beyond the rate limit and the queue bound', async () => {
    const s = new Scheduler({ ...base, maxQueued: 1, userRatePerMinute: 1, userBurst: 1 });
    const jobs = Array.from({ length: 6 }, (_, i) => s.submit({ conversation: 'terminal', user: 'local', trusted: true, run: async () => i }));
    expect(await Promise.all(jobs.map((j) => j.result))).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('says a rate limit is the user\'s own, with its numbers and when to retry', async () => {
    const s = new Scheduler({ ...base, userRatePerMinute: 6, userBurst: 1 });
    await s.submit({ conversation: 'a', user: 'u', run: async () => 1 }).result;
    const limited = s.submit({ conversation: 'a', user: 'u', run: async () => 2 });
    await expect(limited.result).rejects.toThrow(/your own message limit \(6 per minute, 1 at once\); try again in 10 s\. Other people are not affected/);
  });

  it('estimates from the first measured run at once, not from the starting guess', async () => {
    let now = 0;
    const s = new Scheduler({ ...base, initialRunEstimateMs: 10_000, now: () => now });
    expect(s.stats().averageRunMs).toBeNull();
    await s.submit({
      conversation: 'a',
      user: 'a',
      run: async () => {
        now += 100;
      },
    }).result;
    expect(s.stats()).toMatchObject({ averageRunMs: 100, measuredRuns: 1 });
    const hold = gate();
    const etas: number[] = [];
    s.submit({ conversation: 'a', user: 'a', run: () => hold.done });
    s.submit({ conversation: 'b', user: 'b', run: async () => {}, onQueued: (_p, eta) => etas.push(eta ?? NaN) });
    expect(etas).toEqual([1]);
    hold.release();
  });

  it('scales estimates with the tokens a job asks for', async () => {
    let now = 0;
    const s = new Scheduler({ ...base, now: () => now });
    // 32 tokens took 3.2 s: 100 ms per token.
    await s.submit({ conversation: 'a', user: 'a', tokens: 32, run: async () => void (now += 3200) }).result;
    const hold = gate();
    s.submit({ conversation: 'a', user: 'a', tokens: 128, run: () => hold.done });
    const etas: number[] = [];
    s.submit({ conversation: 'b', user: 'b', tokens: 8, run: async () => {}, onQueued: (_p, eta) => etas.push(eta ?? NaN) });
    // 12.8 s for the running 128-token answer, then 0.8 s for its own 8 tokens.
    expect(etas).toEqual([14]);
    now += 10_000;
    expect(s.estimateSeconds(1)).toBe(4);
    hold.release();
  });

  it('counts jobs running side by side when several slots decode at once', async () => {
    const now = 0;
    const s = new Scheduler({ ...base, concurrency: 4, initialRunEstimateMs: 2000, now: () => now });
    const hold = gate();
    for (let i = 0; i < 4; i++) s.submit({ conversation: `r${i}`, user: `r${i}`, run: () => hold.done });
    const etas: number[] = [];
    for (let i = 0; i < 5; i++) s.submit({ conversation: `w${i}`, user: `w${i}`, run: async () => {}, onQueued: (_p, eta) => i === 4 && etas.push(eta ?? NaN) });
    // Four waiting jobs fit in the four slots freed after 2 s; the fifth waits for a second round.
    expect(s.estimateSeconds(4)).toBe(4);
    expect(etas[0]).toBe(6);
    hold.release();
  });

  it('does not count on slots a conversation cannot use: its jobs run one after another', async () => {
    const s = new Scheduler({ ...base, concurrency: 4, initialRunEstimateMs: 2000 });
    const hold = gate();
    s.submit({ conversation: 'terminal', user: 'local', run: () => hold.done });
    const etas: number[] = [];
    for (let i = 0; i < 3; i++) s.submit({ conversation: 'terminal', user: 'local', run: async () => {}, onQueued: (_p, eta) => etas.push(eta ?? NaN) });
    expect(etas.slice(0, 3)).toEqual([4, 6, 8]);
    hold.release();
  });
});
