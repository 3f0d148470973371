/**
 * `fromage serve` / `npm start`: configuration, then the model bundle (offering setup when it is
 * missing), then the service with the enabled adapters, until SIGINT/SIGTERM or the shell ends.
 */
import { config as loadDotenv } from 'dotenv';
import { loadConfig } from '../config.ts';
import { createLogger } from '../log.ts';
import { createAdapters } from './adapters.ts';
import { openConfiguredEngine } from './open-engine.ts';
import { startService } from './service.ts';

export interface ServeOptions {
  readonly forceShell?: boolean;
  readonly yes?: boolean;
}

export async function runServe(options: ServeOptions): Promise<void> {
  loadDotenv({ quiet: true });
  const config = loadConfig();
  const logger = createLogger(config);
  const engine = await openConfiguredEngine(config, logger, { yes: options.yes ?? config.FROMAGE_SETUP_YES });
  let stop: () => Promise<void> = async () => {};
  let stopping: Promise<void> | undefined;
  const shutdown = (why: string) => {
    stopping ??= (async () => {
      // The engine's worker does not hold the event loop open; this does, until all is closed.
      const keepAlive = setInterval(() => {}, 1000);
      logger.info({ why }, 'stopping');
      try {
        await stop();
      } finally {
        clearInterval(keepAlive);
      }
      process.exit(0);
    })();
    return stopping;
  };
  const adapters = await createAdapters(config, logger, { forceShell: options.forceShell, onShellExit: () => void shutdown('terminal closed') });
  const service = await startService({ config, logger, engine, adapters });
  stop = service.stop;
  process.once('SIGINT', () => void shutdown('SIGINT'));
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
}
