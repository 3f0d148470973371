import type { Command } from 'commander';

export function registerServiceCommands(program: Command): void {
  program
    .command('serve', { isDefault: true })
    .description('run the bot: Discord and/or Slack when their credentials are set, the web chat when FROMAGE_WEB_PORT is set or no platform is')
    .option('--yes', 'run `fromage setup` without asking when no model bundle exists')
    .action(async (opts: { yes?: boolean }) => {
      const { runServe } = await import('./run.ts');
      await runServe({ yes: Boolean(opts.yes) });
    });
  program
    .command('chat')
    .description('chat with the bot in this terminal, even when platform credentials are set')
    .action(async () => {
      const { runServe } = await import('./run.ts');
      await runServe({ forceShell: true });
    });
}
