/**
 * bench:scheduler — 100 simulated users x 10 messages through the Scheduler, each job calling
 * the deterministic engine double (test/support). Prints the scheduler's own cost per job:
 * the submit call, and the dispatch latency from a slot freeing to the next job starting.
 * Goal: p99 <= 2 ms. Also prints peak RSS.
 */
import { performance } from 'node:perf_hooks';
import { Scheduler } from '../src/queue/scheduler.ts';
import { FakeEngine } from '../test/support/fake-engine.ts';

const USERS = Number(process.env.BENCH_USERS ?? 100);
const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 10);
const SLOTS = Number(process.env.BENCH_SLOTS ?? 2);

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function main(): Promise<void> {
  const engine = new FakeEngine();
  const scheduler = new Scheduler({
    concurrency: SLOTS,
    maxQueued: USERS * MESSAGES,
    userRatePerMinute: 1e6,
    userBurst: MESSAGES,
    jobTimeoutMs: 60_000,
  });
  const submitMs: number[] = [];
  const dispatchMs: number[] = [];
  /** Per job: submit cost + dispatch latency (when it waited for a slot). */
  const overhead: number[] = [];
  let lastEnd = 0;
  let peakRss = process.memoryUsage().rss;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 5);
  const started = performance.now();
  const jobs: Promise<unknown>[] = [];
  // Messages arrive interleaved: every user's 1st message, then every user's 2nd, ...
  for (let m = 0; m < MESSAGES; m++) {
    for (let u = 0; u < USERS; u++) {
      const t0 = performance.now();
      const job = submitMs.length;
      const handle = scheduler.submit({
        conversation: `user${u}-channel${m % 3}`,
        user: `user${u}`,
        run: async (signal) => {
          const now = performance.now();
          // A slot was free since the later of the last job's end and this job's submission.
          const dispatch = lastEnd > 0 ? Math.max(0, now - Math.max(lastEnd, t0)) : 0;
          if (lastEnd > 0) dispatchMs.push(dispatch);
          overhead[job] = (overhead[job] ?? 0) + dispatch;
          const r = await engine.chat([{ type: 'text', text: `Q: message ${m} from ${u}\nA:` }], { retScaleFactor: 1, maxImages: 2, maxWords: 32, temperature: 0 }, { signal });
          lastEnd = performance.now();
          return r;
        },
      });
      const cost = performance.now() - t0;
      submitMs.push(cost);
      overhead[job] = (overhead[job] ?? 0) + cost;
      jobs.push(handle.result);
    }
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(jobs);
  clearInterval(sampler);
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
  const wall = performance.now() - started;
  overhead.sort((a, b) => a - b);
  submitMs.sort((a, b) => a - b);
  dispatchMs.sort((a, b) => a - b);
  const fmt = (x: number) => x.toFixed(3);
  console.log(`bench:scheduler  ${USERS} users x ${MESSAGES} messages = ${jobs.length} jobs, ${SLOTS} slots, engine = test double`);
  console.log(`  submit()          p50 ${fmt(percentile(submitMs, 50))} ms   p99 ${fmt(percentile(submitMs, 99))} ms`);
  console.log(`  dispatch latency  p50 ${fmt(percentile(dispatchMs, 50))} ms   p99 ${fmt(percentile(dispatchMs, 99))} ms   (slot free -> next job running)`);
  console.log(`  overhead per job  p50 ${fmt(percentile(overhead, 50))} ms   p99 ${fmt(percentile(overhead, 99))} ms   goal p99 <= 2 ms: ${percentile(overhead, 99) <= 2 ? 'met' : 'NOT met'}`);
  console.log(`  wall ${wall.toFixed(0)} ms for all jobs (${((jobs.length / wall) * 1000).toFixed(0)} jobs/s), peak RSS ${(peakRss / 2 ** 20).toFixed(0)} MiB`);
}

await main();
