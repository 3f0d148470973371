/**
 * The OAuth2 link that adds the bot to a server with exactly the permissions it uses, and the
 * registration of the `/fromage` command.
 */
import { PermissionFlagsBits, REST, Routes } from 'discord.js';
import { parseApiBase } from './api-base.ts';
import { fromageCommand } from './slash.ts';

/** Read and answer in channels and threads, attach retrieved images, reply to the asker. Nothing more. */
export const BOT_PERMISSIONS =
  PermissionFlagsBits.ViewChannel |
  PermissionFlagsBits.SendMessages |
  PermissionFlagsBits.SendMessagesInThreads |
  PermissionFlagsBits.AttachFiles |
  PermissionFlagsBits.ReadMessageHistory;

export const BOT_SCOPES = ['bot', 'applications.commands'] as const;

/** The authorize page lives on the same host as the API (discord.com, or a compatible server). */
export function inviteUrl(applicationId: string, apiBase: string): string {
  const url = new URL('/oauth2/authorize', new URL(apiBase).origin);
  url.searchParams.set('client_id', applicationId);
  url.searchParams.set('scope', BOT_SCOPES.join(' '));
  url.searchParams.set('permissions', BOT_PERMISSIONS.toString());
  url.searchParams.set('integration_type', '0');
  return url.toString();
}

export interface RegisterTarget {
  readonly token: string;
  readonly applicationId: string;
  readonly apiBase: string;
  /** One guild (instant; for testing) instead of every guild (global; may take a while to show). */
  readonly guildId?: string;
}

/** Replaces the application's commands (in the guild, or globally) with `/fromage`. */
export async function registerFromageCommand(target: RegisterTarget): Promise<number> {
  const base = parseApiBase(target.apiBase);
  const rest = new REST({ api: base.api, ...(base.version ? { version: base.version } : {}) }).setToken(target.token);
  const route = target.guildId
    ? Routes.applicationGuildCommands(target.applicationId, target.guildId)
    : Routes.applicationCommands(target.applicationId);
  const result = (await rest.put(route, { body: [fromageCommand()] })) as unknown[];
  return result.length;
}
