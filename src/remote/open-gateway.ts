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
 * Workers on /healthz and /metrics; the configuration the service gets: its scheduler runs as many
 * jobs at once as the workers announced at start (FROMAGE_BATCH when none had yet).
 */
export function attachGateway(engine: Engine, deps: { config: Config; metrics: ServiceMetrics; readiness: Readiness; logger?: Logger }): Config {
  if (!(engine instanceof RemoteEngine)) return deps.config;
  engine.registerMetrics(deps.metrics.registry);
  deps.readiness.addDetails(() => ({ remote: engine.health() }));
  const capacity = engine.capacity();
  const concurrency = capacity > 0 ? capacity : deps.config.FROMAGE_BATCH;
  // The scheduler's concurrency is fixed when it starts: say so when the workers change.
  engine.onCapacityChange((slots) => {
    if (slots === concurrency) return;
    deps.logger?.warn(
      { workerSlots: slots, schedulerSlots: concurrency },
      slots > concurrency
        ? 'the workers now take more jobs at once than the gateway hands out; restart the gateway to use them all'
        : 'the workers now take fewer jobs at once than the gateway hands out; the rest wait for a free worker',
    );
  });
  return { ...deps.config, FROMAGE_BATCH: concurrency };
}
