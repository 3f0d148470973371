/**
 * Opens the FROMAGe engine the configuration names. A missing bundle is the first thing a new
 * self-hoster meets, so it gets a message that says what to run, not a stack trace.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.ts';
import type { Engine } from '../model/engine-api.ts';
import { MANIFEST_FILE } from '../model/manifest.ts';
import { UserFacingError } from '../conversation/errors.ts';
import { describeThreads, resolveThreads } from '../model/threads.ts';

export class BundleMissingError extends UserFacingError {
  constructor(dir: string) {
    super(
      [
        `No model bundle at ${resolve(dir)}.`,
        'Get one with:  npx fromage setup        (downloads about 15 GB from Hugging Face and converts it)',
        '          or:  npm start -- --yes       (the same, then starts the bot)',
        'or point FROMAGE_BUNDLE in .env at an existing bundle (see checkpoints/README.md).',
      ].join('\n'),
    );
  }
}

export function bundleExists(dir: string): boolean {
  return existsSync(join(dir, MANIFEST_FILE));
}

export async function openConfiguredEngine(config: Config, logger: Logger, options: { yes: boolean }): Promise<Engine> {
  // A gateway: the model lives in `fromage worker` processes; no Redis code loads without the URL.
  if (config.FROMAGE_REDIS_URL) return (await import('../remote/open-gateway.ts')).openRemoteEngine(config, logger);
  if (!bundleExists(config.FROMAGE_BUNDLE)) {
    const { ensureBundle } = await import('../setup/ensure-bundle.ts');
    const outcome = await ensureBundle(config, logger, { interactive: Boolean(process.stdin.isTTY), yes: options.yes });
    if (outcome !== 'ready' || !bundleExists(config.FROMAGE_BUNDLE)) throw new BundleMissingError(config.FROMAGE_BUNDLE);
  }
  const { openEngine } = await import('../model/engine.ts');
  logger.info(describeThreads(resolveThreads(config.FROMAGE_THREADS)));
  return openEngine({
    bundleDir: config.FROMAGE_BUNDLE,
    indexDirs: config.FROMAGE_INDEX,
    device: config.FROMAGE_DEVICE,
    threads: config.FROMAGE_THREADS,
    dataDir: config.FROMAGE_DATA_DIR,
    fetchAllow: config.FROMAGE_FETCH_ALLOW,
    batch: config.FROMAGE_BATCH,
    kvCacheMb: config.FROMAGE_KV_CACHE_MB,
    kvDiskMb: config.FROMAGE_KV_DISK_MB,
    kvCodec: config.FROMAGE_KV_CODEC,
    logger,
  });
}
