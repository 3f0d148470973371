/**
 * `fromage discord invite` and `fromage discord register [--guild ID]`: the two setup steps a
 * self-hoster runs once. Heavy imports stay inside the actions so `fromage --help` stays fast.
 */
import type { Command } from 'commander';
import { UserFacingError } from '../../src/conversation/errors.ts';
import type { DiscordConfig } from './config.ts';

function userFacing(message: string): Error {
  return new UserFacingError(message);
}

/**
 * `loadEnvConfig` reads and validates the environment (the CLI passes the service's loader), so
 * this folder needs nothing from the service.
 */
export function registerDiscordCommands(program: Command, loadEnvConfig: () => Promise<DiscordConfig>): void {
  const discord = program.command('discord').description('Discord setup: the invite link and the /fromage command');

  discord
    .command('invite')
    .description('print the URL that adds the bot to a server, with the permissions it needs')
    .action(async () => {
      const config = await loadEnvConfig();
      if (!config.DISCORD_APPLICATION_ID)
        throw userFacing('DISCORD_APPLICATION_ID is not set: copy the Application ID from the Discord developer portal (General Information) into .env');
      const { inviteUrl } = await import('./invite.ts');
      process.stdout.write(`${inviteUrl(config.DISCORD_APPLICATION_ID, config.DISCORD_API_BASE)}\n`);
    });

  discord
    .command('register')
    .description('register the /fromage slash command, globally or for one server')
    .option('--guild <id>', 'register for this server only (shows up at once; global registration can take a while)')
    .action(async (opts: { guild?: string }) => {
      const config = await loadEnvConfig();
      if (!config.DISCORD_TOKEN || !config.DISCORD_APPLICATION_ID)
        throw userFacing('DISCORD_TOKEN and DISCORD_APPLICATION_ID must be set (in .env) to register commands');
      if (opts.guild !== undefined && !/^\d+$/.test(opts.guild))
        throw userFacing(`--guild must be a numeric server id (right-click the server > Copy Server ID), not "${opts.guild}"`);
      const { registerFromageCommand } = await import('./invite.ts');
      try {
        await registerFromageCommand({
          token: config.DISCORD_TOKEN,
          applicationId: config.DISCORD_APPLICATION_ID,
          apiBase: config.DISCORD_API_BASE,
          guildId: opts.guild,
        });
      } catch (err) {
        const detail = err instanceof Error ? err.message : String(err);
        throw userFacing(`Discord refused the command registration: ${detail}. Check DISCORD_TOKEN and DISCORD_APPLICATION_ID (and that the bot is in the server for --guild).`);
      }
      process.stdout.write(opts.guild ? `Registered /fromage in server ${opts.guild}.\n` : 'Registered /fromage globally (clients may take a few minutes to show it; use --guild ID for instant testing).\n');
    });
}
