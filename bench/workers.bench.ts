/**
 * `npm run bench:workers`: the gateway's remote engine (in this process) and 1, 2 and 3
 * `fromage worker` processes (1 onnxruntime thread each) on a real redis-server on loopback,
 * on an OPT-125m-shaped random-weight bundle (bench/synthetic-bundle.ts) or --bundle.
 *
 * For each worker count: the same set of distinct chat jobs (greedy, --answer tokens at most)
 * submitted at once; aggregate answers/s and tokens/s over the wall time, and the queue overhead
 * per job: gateway enqueue (before the BullMQ add) to the worker's start of the job, both clocks
 * on this machine (performance.timeOrigin + now), p50/p99. Ratios against one worker, measured
 * in the same run. One worker per core at most is meaningful: the figures print the cores.
 *
 *   npm run bench:workers -- [--bundle DIR] [--weights int4|fp32] [--work DIR] [--jobs 24]
 *                            [--answer 16] [--workers 1,2,3] [--batch 1] [--words 24 (per prompt)]
 */
import { mkdir, rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { DEFAULT_SETTINGS } from '../src/conversation/types.ts';
import { parseRedisUrl } from '../src/remote/redis-url.ts';
import { RemoteEngine } from '../src/remote/remote-engine.ts';
import { startProc, type Proc } from '../test/remote/cluster.ts';
import { startTestRedis } from '../test/remote/redis-server.ts';
import { benchBundle, benchWork, BUNDLE_OPTIONS } from './bench-bundle.ts';
import { SYNTHETIC_WORDS } from './synthetic-bundle.ts';
import { xorshift32 } from './xorshift.ts';

const out = (s: string): boolean => process.stdout.write(s);

interface Row {
  readonly workers: number;
  readonly seconds: number;
  readonly answers: number;
  readonly tokens: number;
  readonly overheadMs: number[];
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : Number.NaN;
};

function prompts(n: number, seed: number, length: number): string[] {
  const next = xorshift32(seed);
  return Array.from({ length: n }, (_, i) => {
    const words = Array.from({ length }, () => SYNTHETIC_WORDS[Math.floor(next() * SYNTHETIC_WORDS.length)]);
    return `Q: ${i} ${words.join(' ')}?\nA:`;
  });
}

async function measure(bundle: string, work: string, redisUrl: string, n: number, batch: number, jobs: string[], answer: number): Promise<Row> {
  const procs: Proc[] = [];
  for (let i = 0; i < n; i++) {
    const dataDir = join(work, `data-w${n}-${i}`);
    await mkdir(dataDir, { recursive: true });
    procs.push(
      startProc(['src/cli.ts', 'worker', '--threads', '1', '--batch', String(batch)], {
        FROMAGE_REDIS_URL: redisUrl,
        FROMAGE_BUNDLE: bundle,
        FROMAGE_DATA_DIR: dataDir,
        FROMAGE_KV_DISK_MB: '0',
        FROMAGE_WORKER_TIMEOUT_S: '5',
        LOG_LEVEL: 'warn',
      }),
    );
  }
  const overheadMs: number[] = [];
  let measuring = false;
  const engine = await RemoteEngine.open({
    redis: parseRedisUrl(redisUrl),
    logger: pino({ level: 'warn' }),
    bundleDir: bundle,
    affinityWaitMs: 0,
    noWorkerWaitMs: 120_000,
    jobTimeoutMs: 600_000,
    workerTtlMs: 5000,
    startWaitMs: 0,
    onJobStarted: (ms) => {
      if (measuring) overheadMs.push(ms);
    },
  });
  try {
    const deadline = Date.now() + 300_000;
    while (engine.capacity() < n * batch) {
      if (Date.now() > deadline) throw new Error(`only ${engine.capacity()} of ${n * batch} worker slots announced`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const settings = { ...DEFAULT_SETTINGS, maxWords: answer };
    // Warm-up: a job per slot (first runs build onnxruntime's kernels).
    await Promise.all(Array.from({ length: n * batch }, (_, i) => engine.chat([{ type: 'text', text: `Q: warm up ${n} ${i}\nA:` }], settings)));
    measuring = true;
    const t0 = performance.now();
    const results = await Promise.all(jobs.map((text) => engine.chat([{ type: 'text', text }], settings)));
    const seconds = (performance.now() - t0) / 1000;
    return { workers: n, seconds, answers: results.length, tokens: results.reduce((s, r) => s + r.generatedTokens, 0), overheadMs };
  } finally {
    await engine.close();
    for (const p of procs) p.kill('SIGTERM');
    await Promise.all(procs.map((p) => p.exited));
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      ...BUNDLE_OPTIONS,
      jobs: { type: 'string', default: '24' },
      answer: { type: 'string', default: '16' },
      workers: { type: 'string', default: '1,2,3' },
      batch: { type: 'string', default: '1' },
      words: { type: 'string', default: '24' },
    },
  });
  const work = await benchWork(values);
  const bundle = await benchBundle(values, work);
  const counts = values.workers.split(',').map(Number);
  const batch = Number(values.batch);
  const answer = Number(values.answer);
  const redis = await startTestRedis();
  const runDir = join(work, `workers-${process.pid}`);
  out(`bench:workers  bundle ${bundle}; redis-server on loopback; ${values.jobs} jobs of up to ${answer} tokens; workers 1 thread, batch ${batch}; ${availableParallelism()} cores here\n`);
  const rows: Row[] = [];
  try {
    for (const n of counts) {
      const row = await measure(bundle, runDir, redis.url, n, batch, prompts(Number(values.jobs), 1000 + n, Number(values.words)), answer);
      rows.push(row);
      out(
        `  ${n} worker${n > 1 ? 's' : ' '}: ${(row.answers / row.seconds).toFixed(2)} answers/s, ${(row.tokens / row.seconds).toFixed(1)} tokens/s ` +
          `(${row.answers} answers, ${row.tokens} tokens in ${row.seconds.toFixed(2)} s); queue overhead p50 ${pct(row.overheadMs, 50).toFixed(2)} ms, p99 ${pct(row.overheadMs, 99).toFixed(2)} ms\n`,
      );
    }
  } finally {
    await redis.destroy();
    await rm(runDir, { recursive: true, force: true });
  }
  const base = rows.find((r) => r.workers === 1);
  if (base) {
    for (const r of rows.filter((x) => x !== base))
      out(`  ${r.workers} workers / 1 worker: answers/s x${(r.answers / r.seconds / (base.answers / base.seconds)).toFixed(2)}, tokens/s x${(r.tokens / r.seconds / (base.tokens / base.seconds)).toFixed(2)}${r.workers === 2 ? ' (goal: at least x1.7)' : ''}\n`);
  }
  const all = rows.flatMap((r) => r.overheadMs);
  out(`  queue overhead over all runs: p50 ${pct(all, 50).toFixed(2)} ms, p99 ${pct(all, 99).toFixed(2)} ms (goal: p99 under 5 ms)\n`);
  if (counts.some((n) => n > availableParallelism())) out(`  note: more workers than the ${availableParallelism()} cores here: they share cores, so the ratios understate the scaling\n`);
}

await main();
process.exit(0);
