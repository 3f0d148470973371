/** Prometheus metrics (prom-client), one registry per service so tests stay isolated. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { SchedulerObserver } from '../queue/scheduler.ts';
import type { ServingStats } from '../model/worker-protocol.ts';

export interface ServiceMetrics {
  readonly registry: Registry;
  readonly schedulerObserver: SchedulerObserver;
  countTokens(tokens: number, seconds: number): void;
  countError(kind: string): void;
  countMessage(platform: string, intent: string): void;
  /** Reads the engine's batch and kept-cache counters at each scrape (the in-process engine has them). */
  watchServing(read: () => Promise<ServingStats | undefined>): void;
}

/**
 * Serving counters are owned by the model worker and restart with it, so they are exported as
 * gauges read at scrape time rather than as counters this process increments.
 */
function servingGauges(registry: Registry, read: () => Promise<ServingStats | undefined>): void {
  const fields: [string, string, (s: ServingStats) => number | undefined][] = [
    ['fromage_batch_rows', 'Conversations decoding in the batch now', (s) => s.batch.rows],
    ['fromage_batch_rows_max', 'Rows the batch holds (FROMAGE_BATCH)', (s) => s.batch.maxRows],
    ['fromage_batch_waiting', 'Jobs waiting for a batch row', (s) => s.batch.waiting],
    ['fromage_batch_waiting_memory', 'Jobs waiting for KV memory under FROMAGE_KV_CACHE_MB while a batch row is free', (s) => s.batch.waitingForMemory],
    ['fromage_batch_occupancy', 'Mean rows per decoder step since the model worker started', (s) => (s.batch.steps > 0 ? s.batch.rowSteps / s.batch.steps : 0)],
    ['fromage_kv_reused_positions', 'Prompt positions taken from kept caches since the model worker started', (s) => s.kv?.reusedPositions],
    ['fromage_kv_prefilled_positions', 'Prompt positions prefilled since the model worker started', (s) => s.kv?.prefilledPositions],
    ['fromage_kv_evictions', 'Kept caches evicted from memory since the model worker started', (s) => s.kv?.evictions],
    ['fromage_kv_spill_writes', 'Kept caches written to the disk spill since the model worker started', (s) => s.kv?.spillWrites],
    ['fromage_kv_spill_reads', 'Kept caches read back from the disk spill since the model worker started', (s) => s.kv?.spillReads],
    ['fromage_kv_spill_missed', 'Kept caches that never reached the disk spill (a write failed, or the cache was evicted before its write began) since the model worker started', (s) => s.kv?.spillErrors],
    ['fromage_kv_live_bytes', 'Memory held by live KV caches: rows answering and prompts being prefilled', (s) => s.batch.liveBytes],
    ['fromage_kv_bytes', 'Memory held by kept caches', (s) => s.kv?.bytes],
    ['fromage_kv_writing_bytes', 'Memory held by kept caches while their disk spill writes run, evicted ones included (counted in the budget)', (s) => s.kv?.writingBytes],
    ['fromage_kv_budget_bytes', 'Memory budget for live and kept KV caches together (FROMAGE_KV_CACHE_MB)', (s) => s.kv?.budgetBytes],
  ];
  // One read per scrape, shared by every gauge.
  let pending: Promise<ServingStats | undefined> | undefined;
  const snapshot = (): Promise<ServingStats | undefined> => {
    pending ??= read()
      .catch(() => undefined)
      .finally(() => setImmediate(() => (pending = undefined)));
    return pending;
  };
  for (const [name, help, pick] of fields) {
    new Gauge({
      name,
      help,
      registers: [registry],
      async collect() {
        const s = await snapshot();
        const v = s ? pick(s) : undefined;
        if (v !== undefined) this.set(v);
      },
    });
  }
}

export function createMetrics(options: { defaultMetrics?: boolean } = {}): ServiceMetrics {
  const registry = new Registry();
  if (options.defaultMetrics) collectDefaultMetrics({ register: registry });
  const queueDepth = new Gauge({ name: 'fromage_queue_depth', help: 'Jobs waiting for an engine slot', registers: [registry] });
  const running = new Gauge({ name: 'fromage_jobs_running', help: 'Jobs running on the engine', registers: [registry] });
  const wait = new Histogram({
    name: 'fromage_queue_wait_seconds',
    help: 'Time from submission to start',
    buckets: [0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300],
    registers: [registry],
  });
  const run = new Histogram({
    name: 'fromage_job_run_seconds',
    help: 'Engine time per job',
    labelNames: ['outcome'],
    buckets: [0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300],
    registers: [registry],
  });
  const tokens = new Counter({ name: 'fromage_generated_tokens_total', help: 'Tokens generated', registers: [registry] });
  const tokensPerSecond = new Gauge({ name: 'fromage_tokens_per_second', help: 'Decode speed of the last answer', registers: [registry] });
  const errors = new Counter({ name: 'fromage_errors_total', help: 'Failed requests by kind', labelNames: ['kind'], registers: [registry] });
  const messages = new Counter({ name: 'fromage_messages_total', help: 'Requests by platform and intent', labelNames: ['platform', 'intent'], registers: [registry] });
  return {
    registry,
    schedulerObserver: {
      jobStarted: (waitMs) => wait.observe(waitMs / 1000),
      jobFinished: (runMs, outcome) => run.observe({ outcome }, runMs / 1000),
      queueChanged: (q, r) => {
        queueDepth.set(q);
        running.set(r);
      },
    },
    countTokens(n, seconds) {
      tokens.inc(n);
      if (seconds > 0 && n > 0) tokensPerSecond.set(n / seconds);
    },
    countError: (kind) => errors.inc({ kind }),
    countMessage: (platform, intent) => messages.inc({ platform, intent }),
    watchServing: (read) => servingGauges(registry, read),
  };
}
