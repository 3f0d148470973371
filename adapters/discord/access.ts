/**
 * Who may talk to the bot: optional allow-lists of guilds, channels and roles, and DMs on/off.
 * Empty lists allow everything, so an unconfigured bot answers everywhere it is invited.
 */
import type { DiscordConfig } from './config.ts';

export interface AccessRules {
  readonly guilds: ReadonlySet<string>;
  readonly channels: ReadonlySet<string>;
  readonly roles: ReadonlySet<string>;
  readonly dms: boolean;
}

/** Where a message or command came from, in the terms the rules speak. */
export interface Place {
  /** Null in DMs. */
  readonly guildId: string | null;
  readonly channelId: string;
  /** The parent channel when `channelId` is a thread: allowing a channel allows its threads. */
  readonly parentId?: string | null;
  readonly roleIds: readonly string[];
}

export function accessRulesFromConfig(config: DiscordConfig): AccessRules {
  return {
    guilds: new Set(config.DISCORD_GUILD_ALLOW),
    channels: new Set(config.DISCORD_CHANNEL_ALLOW),
    roles: new Set(config.DISCORD_ROLE_ALLOW),
    dms: config.DISCORD_DMS,
  };
}

export function isAllowed(rules: AccessRules, place: Place): boolean {
  if (place.guildId === null) return rules.dms;
  if (rules.guilds.size > 0 && !rules.guilds.has(place.guildId)) return false;
  if (rules.channels.size > 0) {
    const inList = rules.channels.has(place.channelId) || (place.parentId != null && rules.channels.has(place.parentId));
    if (!inList) return false;
  }
  if (rules.roles.size > 0 && !place.roleIds.some((r) => rules.roles.has(r))) return false;
  return true;
}
