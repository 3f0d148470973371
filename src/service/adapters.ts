/**
 * Picks the adapters the configuration enables: Discord and/or Slack, plus the web chat when
 * FROMAGE_WEB_PORT is set or no platform is (then on 7860); the terminal only for `fromage chat`.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.ts';
import type { HistoryStore } from '../conversation/history.ts';
import type { Adapter } from '../conversation/types.ts';

export function enabledPlatforms(config: Config): ('discord' | 'slack')[] {
  const platforms: ('discord' | 'slack')[] = [];
  if (config.DISCORD_TOKEN) platforms.push('discord');
  if (config.SLACK_BOT_TOKEN) platforms.push('slack');
  return platforms;
}

export async function createAdapters(config: Config, logger: Logger, options: { forceShell?: boolean; onShellExit?: () => void; history?: HistoryStore } = {}): Promise<Adapter[]> {
  const platforms = options.forceShell ? [] : enabledPlatforms(config);
  const adapters: Adapter[] = [];
  for (const platform of platforms) {
    if (platform === 'discord') {
      const { createDiscordAdapter } = await import('../../adapters/discord/index.ts');
      adapters.push(createDiscordAdapter(config, logger.child({ platform })));
    } else {
      const { createSlackAdapter } = await import('../../adapters/slack/index.ts');
      adapters.push(createSlackAdapter(config, logger.child({ platform })));
    }
  }
  if (!options.forceShell && (config.FROMAGE_WEB_PORT !== undefined || adapters.length === 0)) {
    const { createWebAdapter, DEFAULT_WEB_PORT } = await import('../../adapters/web/index.ts');
    adapters.push(
      createWebAdapter({
        host: config.FROMAGE_WEB_HOST,
        port: config.FROMAGE_WEB_PORT ?? DEFAULT_WEB_PORT,
        token: config.FROMAGE_WEB_TOKEN,
        storePath: join(config.FROMAGE_DATA_DIR, 'web.sqlite'),
        maxImagesPerMessage: config.FROMAGE_MAX_IMAGES_PER_MESSAGE,
        maxImageBytes: config.FROMAGE_MAX_IMAGE_BYTES,
        history: options.history,
        logger: logger.child({ platform: 'web' }),
        onListening: (url) => process.stdout.write(`\nFROMAGe web chat: open ${url} in your browser. (\`fromage chat\` talks in this terminal instead.)\n\n`),
      }),
    );
  }
  if (adapters.length === 0) {
    const { createShellAdapter } = await import('../../adapters/shell/index.ts');
    adapters.push(
      createShellAdapter({
        input: process.stdin,
        output: process.stdout,
        imageDir: join(config.FROMAGE_DATA_DIR, 'shell-images'),
        interactive: Boolean(process.stdin.isTTY),
        onExit: options.onShellExit,
      }),
    );
  }
  return adapters;
}
