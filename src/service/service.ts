/**
 * The composition root: history, scheduler, metrics and handler around one engine, fed by the
 * adapters the configuration enables. `stop()` is what SIGINT/SIGTERM run.
 */
import type { Server } from 'node:http';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.ts';
import { SqliteHistoryStore, type HistoryStore } from '../conversation/history.ts';
import type { Adapter, MessageHandler } from '../conversation/types.ts';
import type { Engine } from '../model/engine-api.ts';
import { Scheduler } from '../queue/scheduler.ts';
import { createMessageHandler } from './handler.ts';
import { Readiness, startHttp } from './http.ts';
import { createMetrics, type ServiceMetrics } from './metrics.ts';
import type { ServingStats } from '../model/worker-protocol.ts';

export interface ServiceOptions {
  readonly config: Config;
  readonly logger: Logger;
  readonly engine: Engine;
  readonly adapters: readonly Adapter[];
  /** Defaults to SQLite under FROMAGE_DATA_DIR. */
  readonly history?: HistoryStore;
  /** Grace period for running jobs at shutdown. */
  readonly shutdownGraceMs?: number;
  /**
   * Opened earlier by the caller (`fromage serve` opens HTTP_PORT before loading the model):
   * the server, its metrics and what /healthz reports. Without it, HTTP_PORT opens here,
   * still before the adapters connect.
   */
  readonly early?: { readonly http?: Server; readonly metrics: ServiceMetrics; readonly readiness: Readiness };
}

export interface RunningService {
  readonly metrics: ServiceMetrics;
  readonly scheduler: Scheduler;
  readonly http?: Server;
  stop(): Promise<void>;
}

export async function startService(options: ServiceOptions): Promise<RunningService> {
  const { config, logger, engine, adapters } = options;
  const metrics = options.early?.metrics ?? createMetrics({ defaultMetrics: config.HTTP_PORT !== undefined });
  const readiness = options.early?.readiness ?? new Readiness();
  const http =
    options.early?.http ?? (config.HTTP_PORT === undefined ? undefined : await startHttp(config.HTTP_PORT, metrics.registry, readiness));
  const closeHttp = () => new Promise<void>((r) => (http ? http.close(() => r()) : r()));
  if ('servingStats' in engine && typeof engine.servingStats === 'function') {
    const source = engine as { servingStats(): Promise<ServingStats | undefined> };
    metrics.watchServing(() => source.servingStats());
  }
  const history = options.history ?? new SqliteHistoryStore(join(config.FROMAGE_DATA_DIR, 'history.sqlite'), { maxTurns: config.FROMAGE_HISTORY_TURNS });
  const scheduler = new Scheduler(
    {
      concurrency: config.FROMAGE_BATCH,
      maxQueued: config.FROMAGE_QUEUE_LIMIT,
      userRatePerMinute: config.FROMAGE_USER_RATE,
      userBurst: config.FROMAGE_USER_BURST,
      jobTimeoutMs: config.FROMAGE_JOB_TIMEOUT_S * 1000,
    },
    metrics.schedulerObserver,
  );
  const handler = createMessageHandler({
    engine,
    history,
    scheduler,
    logger,
    metrics,
    limits: { maxImagesPerMessage: config.FROMAGE_MAX_IMAGES_PER_MESSAGE, maxImageBytes: config.FROMAGE_MAX_IMAGE_BYTES },
  });
  let stopping = false;
  // Answers and "please resend" notices still being delivered when shutdown starts.
  const deliveries = new Set<Promise<void>>();
  const tracked: MessageHandler = (message, responder) => {
    const delivery = handler(message, responder).finally(() => deliveries.delete(delivery));
    deliveries.add(delivery);
    return delivery;
  };
  const started: Adapter[] = [];
  const stopAll = async () => {
    await Promise.allSettled(started.map((a) => a.stop()));
  };
  for (const adapter of adapters) readiness.waitFor(`${adapter.platform} to connect`);
  try {
    for (const adapter of adapters) {
      await adapter.start(tracked);
      started.push(adapter);
      readiness.done(`${adapter.platform} to connect`);
      logger.info({ platform: adapter.platform }, 'adapter started');
    }
  } catch (err) {
    await stopAll();
    history.close();
    await closeHttp();
    throw err;
  }
  readiness.ready(() => ({ adapters: started.map((a) => a.platform), bundle: engine.info.bundleId, ...scheduler.stats() }));
  return {
    metrics,
    scheduler,
    http,
    async stop() {
      if (stopping) return;
      stopping = true;
      readiness.stopping();
      logger.info('shutting down: no new requests; finishing running answers');
      // Below the 30 s that compose and systemd give before SIGKILL.
      await scheduler.shutdown(options.shutdownGraceMs ?? 20_000);
      await Promise.race([Promise.allSettled([...deliveries]), new Promise((r) => setTimeout(r, 5_000).unref())]);
      await stopAll();
      await closeHttp();
      history.close();
      await engine.close();
      logger.info('stopped');
    },
  };
}
