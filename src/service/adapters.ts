/** Picks the adapters the configuration enables: Discord and/or Slack, else the terminal. */
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.ts';
import type { Adapter } from '../conversation/types.ts';

export function enabledPlatforms(config: Config): ('discord' | 'slack')[] {
  const platforms: ('discord' | 'slack')[] = [];
  if (config.DISCORD_TOKEN) platforms.push('discord');
  if (config.SLACK_BOT_TOKEN) platforms.push('slack');
  return platforms;
}

export async function createAdapters(config: Config, logger: Logger, options: { forceShell?: boolean; onShellExit?: () => void } = {}): Promise<Adapter[]> {
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
