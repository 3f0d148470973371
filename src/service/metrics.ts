/** Prometheus metrics (prom-client), one registry per service so tests stay isolated. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { SchedulerObserver } from '../queue/scheduler.ts';

export interface ServiceMetrics {
  readonly registry: Registry;
  readonly schedulerObserver: SchedulerObserver;
  countTokens(tokens: number, seconds: number): void;
  countError(kind: string): void;
  countMessage(platform: string, intent: string): void;
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
  };
}
