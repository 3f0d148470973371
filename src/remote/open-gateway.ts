/**
 * `fromage serve` with FROMAGE_REDIS_URL: the remote engine instead of the model, plus what the
 * gateway shows on /healthz and /metrics. Loaded only when the URL is set.
 */
import type { Logger } from 'pino';
import type { Config } from '../config.ts';
import type { Engine } from '../model/engine-api.ts';
import type { Readiness } from '../service/http.ts';
import type { ServiceMetrics } from '../service/metrics.ts';
import { parseRedisUrl } from './redis-url.ts';
import { RemoteEngine } from './remote-engine.ts';

export async function openRemoteEngine(config: Config, logger: Logger): Promise<RemoteEngine> {
  const redis = parseRedisUrl(config.FROMAGE_REDIS_URL!, config.FROMAGE_REDIS_CA);
  logger.info({ redis: redis.redacted }, 'FROMAGE_REDIS_URL is set: this process is the gateway; `fromage worker` processes hold the model');
  return RemoteEngine.open({
    redis,
    logger,
    bundleDir: config.FROMAGE_BUNDLE,
    affinityWaitMs: config.FROMAGE_AFFINITY_WAIT_MS,
    noWorkerWaitMs: config.FROMAGE_WORKER_WAIT_S * 1000,
    jobTimeoutMs: config.FROMAGE_JOB_TIMEOUT_S * 1000,
    workerTtlMs: config.FROMAGE_WORKER_TIMEOUT_S * 1000,
    startWaitMs: config.FROMAGE_WORKER_WAIT_S * 1000,
  });
}

/**
 * Workers on /healthz and /metrics; the configuration the service gets: its scheduler starts with
 * as many jobs at once as the workers announced (FROMAGE_BATCH when none had yet), and
 * followCapacity keeps it in step as workers come and go.
 */
export function attachGateway(engine: Engine, deps: { config: Config; metrics: ServiceMetrics; readiness: Readiness; logger?: Logger }): Config {
  if (!(engine instanceof RemoteEngine)) return deps.config;
  engine.registerMetrics(deps.metrics.registry);
  deps.readiness.addDetails(() => ({ remote: engine.health() }));
  const capacity = engine.capacity();
  return { ...deps.config, FROMAGE_BATCH: capacity > 0 ? capacity : deps.config.FROMAGE_BATCH };
}

/** Hands out as many jobs at once as the live workers take: a worker that joins is used at once. */
export function followCapacity(engine: Engine, scheduler: { setConcurrency(slots: number): void }, logger?: Logger): void {
  if (!(engine instanceof RemoteEngine)) return;
  engine.onCapacityChange((slots) => {
    // No worker at all: keep one slot, so a job waits for a worker (and is told it is busy).
    scheduler.setConcurrency(Math.max(1, slots));
    logger?.info({ workerSlots: slots }, 'model workers changed: the gateway now hands out this many jobs at once');
  });
}
