/**
 * `fromage worker`: loads the bundle and indexes as `fromage serve` would, then answers jobs from
 * Redis until SIGINT/SIGTERM (running answers finish first).
 */
import { loadConfig } from '../config.ts';
import { UserFacingError } from '../conversation/errors.ts';
import { createLogger } from '../log.ts';
import { openConfiguredEngine } from '../service/open-engine.ts';
import { connectOrExplain, newClient } from './connect.ts';
import { parseRedisUrl } from './redis-url.ts';
import { parseComputeNice } from './thread-priority.ts';
import { startWorker } from './worker.ts';

export interface WorkerCliOptions {
  readonly device?: string;
  readonly threads?: string;
  readonly batch?: string;
  readonly yes?: boolean;
  /** Nice value of every thread but the event loop's (thread-priority.ts); 0 leaves them alone. */
  readonly computeNice?: string;
}

export class WorkerNeedsRedisError extends UserFacingError {
  constructor() {
    super('fromage worker needs FROMAGE_REDIS_URL (the Redis the gateway uses), for example FROMAGE_REDIS_URL=redis://:password@redis-host:6379/0 npx fromage worker');
  }
}

export async function runWorker(opts: WorkerCliOptions): Promise<void> {
  // Flags win over the environment and go through the same validation and messages.
  const env = { ...process.env };
  let computeNice: number;
  try {
    computeNice = parseComputeNice(opts.computeNice);
  } catch (err) {
    throw new UserFacingError((err as Error).message);
  }
  if (opts.device !== undefined) env.FROMAGE_DEVICE = opts.device;
  if (opts.threads !== undefined) env.FROMAGE_THREADS = opts.threads;
  if (opts.batch !== undefined) env.FROMAGE_BATCH = opts.batch;
  const config = loadConfig(env);
  if (!config.FROMAGE_REDIS_URL) throw new WorkerNeedsRedisError();
  const redis = parseRedisUrl(config.FROMAGE_REDIS_URL, config.FROMAGE_REDIS_CA);
  const logger = createLogger(config);
  // A wrong URL, password or CA is reported now, not after minutes of loading the model.
  const probe = newClient(redis);
  await connectOrExplain(probe, redis);
  probe.disconnect();
  // The in-process engine, exactly as `fromage serve` without Redis opens it.
  const engine = await openConfiguredEngine({ ...config, FROMAGE_REDIS_URL: undefined }, logger, { yes: Boolean(opts.yes) || config.FROMAGE_SETUP_YES });
  const ttlMs = config.FROMAGE_WORKER_TIMEOUT_S * 1000;
  const worker = await startWorker({ redis, engine, bundleDir: config.FROMAGE_BUNDLE, capacity: config.FROMAGE_BATCH, device: config.FROMAGE_DEVICE, logger, ttlMs, heartbeatMs: Math.max(100, Math.round(ttlMs / 5)), computeNice });
  let stopping: Promise<void> | undefined;
  const shutdown = (why: string) => {
    stopping ??= (async () => {
      const keepAlive = setInterval(() => {}, 1000);
      logger.info({ why }, 'worker stopping: finishing running answers');
      try {
        await worker.stop();
        await engine.close();
      } finally {
        clearInterval(keepAlive);
      }
      process.exit(0);
    })();
    return stopping;
  };
  process.once('SIGINT', () => void shutdown('SIGINT'));
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
}
