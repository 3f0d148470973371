/**
 * `fromage serve` / `npm start`: configuration, HTTP_PORT (so health checks see a bot that is
 * still starting), then the model bundle (offering setup when it is missing), then the service
 * with the enabled adapters, until SIGINT/SIGTERM or the shell ends.
 */
import { join } from 'node:path';
import { config as loadDotenv } from 'dotenv';
import { loadConfig } from '../config.ts';
import { SqliteHistoryStore } from '../conversation/history.ts';
import { createLogger } from '../log.ts';
import { createAdapters } from './adapters.ts';
import { Readiness, startHttp } from './http.ts';
import { createMetrics } from './metrics.ts';
import { openConfiguredEngine } from './open-engine.ts';
import { startService } from './service.ts';
import { createTerminalLog } from './terminal-log.ts';

export interface ServeOptions {
  readonly forceShell?: boolean;
  readonly yes?: boolean;
}

export async function runServe(options: ServeOptions): Promise<void> {
  loadDotenv({ quiet: true });
  const config = loadConfig();
  // A person chatting at this terminal must not get log lines in the middle of the prompt; until
  // a terminal chat starts (if one does) this logs to stderr like the default.
  const terminalLog = process.stdin.isTTY ? createTerminalLog(join(config.FROMAGE_DATA_DIR, 'fromage.log')) : undefined;
  const logger = createLogger(config, terminalLog?.stream);
  const metrics = createMetrics({ defaultMetrics: config.HTTP_PORT !== undefined });
  const readiness = new Readiness();
  readiness.waitFor('the model to load');
  const http = config.HTTP_PORT === undefined ? undefined : await startHttp(config.HTTP_PORT, metrics.registry, readiness);
  if (http) logger.info({ port: config.HTTP_PORT }, 'health and metrics served on HTTP_PORT while the bot starts');
  const engine = await openConfiguredEngine(config, logger, { yes: options.yes ?? config.FROMAGE_SETUP_YES });
  readiness.done('the model to load');
  // A gateway shows its workers on /healthz and /metrics, and sizes its scheduler by their capacity.
  const serviceConfig = config.FROMAGE_REDIS_URL ? (await import('../remote/open-gateway.ts')).attachGateway(engine, { config, metrics, readiness, logger }) : config;
  let stop: () => Promise<void> = async () => {};
  let stopping: Promise<void> | undefined;
  const shutdown = (why: string) => {
    stopping ??= (async () => {
      // The engine's worker does not hold the event loop open; this does, until all is closed.
      const keepAlive = setInterval(() => {}, 1000);
      logger.info({ why }, 'stopping');
      try {
        await stop();
        await terminalLog?.close();
      } finally {
        clearInterval(keepAlive);
      }
      process.exit(0);
    })();
    return stopping;
  };
  // One store for the service and the adapters that show past conversations (the web chat).
  const history = new SqliteHistoryStore(join(config.FROMAGE_DATA_DIR, 'history.sqlite'), { maxTurns: config.FROMAGE_HISTORY_TURNS });
  const adapters = await createAdapters(config, logger, { forceShell: options.forceShell, onShellExit: () => void shutdown('terminal closed'), history });
  const shell = adapters.find((a) => a.platform === 'shell');
  if (terminalLog && shell && 'notice' in shell && typeof shell.notice === 'function') {
    const notice = shell.notice as (line: string) => void;
    terminalLog.attach(notice);
    notice(`(log lines go to ${terminalLog.file}; warnings and errors show here)`);
  }
  const service = await startService({ config: serviceConfig, logger, engine, adapters, history, early: { http, metrics, readiness } });
  if (config.FROMAGE_REDIS_URL) (await import('../remote/open-gateway.ts')).followCapacity(engine, service.scheduler, logger);
  stop = service.stop;
  process.once('SIGINT', () => void shutdown('SIGINT'));
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
}
