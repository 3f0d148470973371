/**
 * Gateway payloads in the v10 shapes discord.js parses: users, guilds with channels, threads
 * and roles, MESSAGE_CREATE and INTERACTION_CREATE bodies.
 */
import { snowflake } from './ids.ts';

export const APP_ID = '1200000000000000001';

export interface UserPayload {
  readonly id: string;
  readonly username: string;
  readonly discriminator: string;
  readonly global_name: string | null;
  readonly avatar: null;
  readonly bot?: boolean;
}

function user(id: string, username: string, bot = false): UserPayload {
  return { id, username, discriminator: '0', global_name: null, avatar: null, ...(bot ? { bot: true } : {}) };
}

/** The bot's own user: a different id from the application, as for older applications. */
export const BOT_USER = user('1200000000000000002', 'fromage', true);
export const ALICE = user('1200000000000000010', 'alice');
export const ADMIN = user('1200000000000000011', 'admin');
export const OTHER_BOT = user('1200000000000000012', 'otherbot', true);

/** ViewChannel | SendMessages, and the same plus ManageGuild. */
export const MEMBER_PERMISSIONS = String((1n << 10n) | (1n << 11n));
export const MANAGER_PERMISSIONS = String((1n << 10n) | (1n << 11n) | (1n << 5n));

export interface GuildFixture {
  readonly id: string;
  readonly payload: Record<string, unknown>;
}

export interface GuildSpec {
  readonly id: string;
  readonly channels: readonly { id: string; name: string }[];
  readonly threads?: readonly { id: string; parentId: string; name: string }[];
  readonly roles?: readonly { id: string; name: string; botId?: string }[];
}

export function guildFixture(spec: GuildSpec): GuildFixture {
  const now = new Date().toISOString();
  const role = (id: string, name: string, permissions: string, botId?: string) => ({
    id,
    name,
    permissions,
    position: 0,
    color: 0,
    hoist: false,
    managed: botId !== undefined,
    mentionable: true,
    flags: 0,
    ...(botId ? { tags: { bot_id: botId } } : {}),
  });
  return {
    id: spec.id,
    payload: {
      id: spec.id,
      name: `guild ${spec.id}`,
      icon: null,
      owner_id: ADMIN.id,
      afk_timeout: 300,
      verification_level: 0,
      default_message_notifications: 0,
      explicit_content_filter: 0,
      mfa_level: 0,
      nsfw_level: 0,
      premium_tier: 0,
      system_channel_flags: 0,
      preferred_locale: 'en-US',
      features: [],
      emojis: [],
      stickers: [],
      roles: [role(spec.id, '@everyone', MEMBER_PERMISSIONS), ...(spec.roles ?? []).map((r) => role(r.id, r.name, '0', r.botId))],
      channels: spec.channels.map((c, i) => ({
        id: c.id,
        type: 0,
        name: c.name,
        guild_id: spec.id,
        position: i,
        permission_overwrites: [],
        parent_id: null,
        nsfw: false,
        rate_limit_per_user: 0,
      })),
      threads: (spec.threads ?? []).map((t) => ({
        id: t.id,
        type: 11,
        name: t.name,
        guild_id: spec.id,
        parent_id: t.parentId,
        owner_id: ALICE.id,
        message_count: 1,
        member_count: 1,
        rate_limit_per_user: 0,
        thread_metadata: { archived: false, auto_archive_duration: 1440, archive_timestamp: now, locked: false },
      })),
      members: [{ user: BOT_USER, roles: [], joined_at: now, deaf: false, mute: false, flags: 0 }],
      member_count: 3,
      large: false,
      unavailable: false,
      joined_at: now,
      voice_states: [],
      presences: [],
      stage_instances: [],
      guild_scheduled_events: [],
      premium_subscription_count: 0,
    },
  };
}

export interface AttachmentPayload {
  readonly id: string;
  readonly filename: string;
  readonly size: number;
  readonly url: string;
  readonly proxy_url: string;
  readonly content_type?: string;
}

export function attachment(url: string, filename: string, size: number, contentType?: string): AttachmentPayload {
  return { id: snowflake(), filename, size, url, proxy_url: url, ...(contentType ? { content_type: contentType } : {}) };
}

export interface MessageSpec {
  readonly channelId: string;
  /** Omitted for DMs. */
  readonly guildId?: string;
  readonly author: UserPayload;
  readonly content: string;
  readonly attachments?: readonly AttachmentPayload[];
  readonly mentions?: readonly UserPayload[];
  readonly mentionRoles?: readonly string[];
  readonly roles?: readonly string[];
  /** 0 guild text, 1 DM, 11 thread: Discord sends it with MESSAGE_CREATE. */
  readonly channelType?: number;
  /** Makes it a reply to this (bot) message. */
  readonly replyTo?: { id: string; author: UserPayload };
}

export function messagePayload(spec: MessageSpec): Record<string, unknown> & { id: string } {
  const now = new Date().toISOString();
  const member = (roles: readonly string[]) => ({ roles, joined_at: now, deaf: false, mute: false, flags: 0 });
  return {
    id: snowflake(),
    channel_id: spec.channelId,
    channel_type: spec.channelType ?? (spec.guildId ? 0 : 1),
    ...(spec.guildId ? { guild_id: spec.guildId, member: member(spec.roles ?? []) } : {}),
    author: spec.author,
    content: spec.content,
    timestamp: now,
    edited_timestamp: null,
    tts: false,
    mention_everyone: false,
    mentions: (spec.mentions ?? []).map((u) => (spec.guildId ? { ...u, member: member([]) } : u)),
    mention_roles: spec.mentionRoles ?? [],
    attachments: spec.attachments ?? [],
    embeds: [],
    pinned: false,
    type: spec.replyTo ? 19 : 0,
    flags: 0,
    ...(spec.replyTo
      ? {
          message_reference: { type: 0, message_id: spec.replyTo.id, channel_id: spec.channelId, guild_id: spec.guildId },
          referenced_message: {
            id: spec.replyTo.id,
            channel_id: spec.channelId,
            author: spec.replyTo.author,
            content: 'an earlier answer',
            timestamp: now,
            edited_timestamp: null,
            tts: false,
            mention_everyone: false,
            mentions: [],
            mention_roles: [],
            attachments: [],
            embeds: [],
            pinned: false,
            type: 0,
          },
        }
      : {}),
  };
}

export interface InteractionSpec {
  readonly token?: string;
  readonly guildId?: string;
  readonly channel: { id: string; type: number; parentId?: string };
  readonly user: UserPayload;
  readonly roles?: readonly string[];
  readonly permissions?: string;
  readonly subcommand: string;
  readonly options?: readonly { name: string; type: number; value: string | number | boolean }[];
  readonly attachments?: readonly AttachmentPayload[];
  readonly attachmentSizeLimit?: number;
}

/** A `/fromage <subcommand>` chat-input interaction. */
export function interactionPayload(spec: InteractionSpec): Record<string, unknown> & { id: string; token: string } {
  const now = new Date().toISOString();
  const guild = spec.guildId !== undefined;
  const resolved = spec.attachments?.length ? { attachments: Object.fromEntries(spec.attachments.map((a) => [a.id, a])) } : undefined;
  return {
    id: snowflake(),
    application_id: APP_ID,
    type: 2,
    token: spec.token ?? `token-${snowflake()}`,
    version: 1,
    locale: 'en-US',
    app_permissions: '2251799813685247',
    entitlements: [],
    authorizing_integration_owners: guild ? { '0': spec.guildId } : { '1': spec.user.id },
    context: guild ? 0 : 1,
    attachment_size_limit: spec.attachmentSizeLimit ?? 10 * 1024 * 1024,
    channel_id: spec.channel.id,
    channel: {
      id: spec.channel.id,
      type: spec.channel.type,
      ...(guild ? { guild_id: spec.guildId, name: 'somewhere', parent_id: spec.channel.parentId ?? null } : { recipients: [spec.user] }),
      flags: 0,
    },
    ...(guild
      ? {
          guild_id: spec.guildId,
          guild_locale: 'en-US',
          member: {
            user: spec.user,
            roles: spec.roles ?? [],
            permissions: spec.permissions ?? MEMBER_PERMISSIONS,
            joined_at: now,
            deaf: false,
            mute: false,
            flags: 0,
          },
        }
      : { user: spec.user }),
    data: {
      id: '1200000000000000099',
      name: 'fromage',
      type: 1,
      options: [{ name: spec.subcommand, type: 1, options: spec.options ?? [] }],
      ...(resolved ? { resolved } : {}),
    },
  };
}
