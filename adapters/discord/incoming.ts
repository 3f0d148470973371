/**
 * Discord messages as the service sees them: whether the bot is addressed, which conversation
 * a message belongs to (channel, thread or DM), and its text with the bot's mention removed.
 */
import type { Message } from 'discord.js';
import type { ConversationKey } from '../../src/conversation/types.ts';
import type { AttachmentInfo } from './images.ts';

/** The parts of a channel that decide the conversation. */
export interface ChannelPlace {
  readonly guildId: string | null;
  readonly channelId: string;
  /** Set when the channel is a thread: the channel it hangs off. */
  readonly threadParentId?: string | null;
}

/** A thread is its own conversation, keyed under its parent channel; a DM is keyed under `dm`. */
export function conversationKeyFor(place: ChannelPlace): ConversationKey {
  if (place.guildId === null) return { platform: 'discord', workspace: 'dm', channel: place.channelId };
  if (place.threadParentId) return { platform: 'discord', workspace: place.guildId, channel: place.threadParentId, thread: place.channelId };
  return { platform: 'discord', workspace: place.guildId, channel: place.channelId };
}

export function placeOfMessage(message: Message): ChannelPlace {
  // The channel can be missing from the cache (an uncached guild channel arriving as a partial).
  const channel = message.channel as Message['channel'] | null;
  const threadParentId = channel?.isThread() ? channel.parentId : null;
  return { guildId: message.guildId, channelId: message.channelId, threadParentId };
}

/** Role ids of the bot's own managed role(s) in this guild: people often mention those instead. */
function botRoleIds(message: Message, botId: string): string[] {
  return message.mentions.roles.filter((r) => r.tags?.botId === botId).map((r) => r.id);
}

/**
 * The bot answers DMs, messages that mention it (or its managed role), and replies to its own
 * messages. It never answers itself or other bots (two bots answering each other never stops).
 */
export function isAddressedToBot(message: Message, botId: string): boolean {
  if (message.author.bot || message.author.id === botId || message.system) return false;
  if (message.guildId === null) return true;
  if (message.mentions.users.has(botId)) return true;
  if (botRoleIds(message, botId).length > 0) return true;
  return message.reference !== null && message.mentions.repliedUser?.id === botId;
}

/** The text for the model: the bot's mentions removed, other mentions as readable names. */
export function cleanText(message: Message, botId: string): string {
  const ownRoles = new Set(botRoleIds(message, botId));
  return message.content
    .replace(/<@!?(\d+)>/g, (whole, id: string) => {
      if (id === botId) return '';
      const user = message.mentions.users.get(id);
      return user ? `@${user.displayName}` : whole;
    })
    .replace(/<@&(\d+)>/g, (whole, id: string) => {
      if (ownRoles.has(id)) return '';
      const role = message.mentions.roles.get(id);
      return role ? `@${role.name}` : whole;
    })
    .replace(/<#(\d+)>/g, (whole, id: string) => {
      const channel = message.mentions.channels.get(id);
      return channel && 'name' in channel && channel.name ? `#${channel.name}` : whole;
    })
    .replace(/[ \t]{2,}/g, ' ')
    .trim();
}

/**
 * Attachments, then embed images. Embed images are taken only through Discord's media proxy
 * (`proxy_url`), never from the URL a user pasted, so the bot never fetches arbitrary hosts.
 */
export function imageCandidates(message: Message): AttachmentInfo[] {
  const out: AttachmentInfo[] = message.attachments.map((a) => ({
    name: a.name,
    url: a.url,
    contentType: a.contentType,
    size: a.size,
  }));
  for (const embed of message.embeds) {
    // A pasted image link becomes an `image` embed with a thumbnail; other links' thumbnails are
    // page previews, not something the user meant to show.
    const media = embed.image ?? (embed.data.type === 'image' ? embed.thumbnail : null);
    if (media?.proxyURL)
      out.push({ name: nameFromUrl(media.proxyURL), url: media.proxyURL, contentType: null, size: null, embedded: true });
  }
  return out;
}

function nameFromUrl(url: string): string {
  try {
    const last = new URL(url).pathname.split('/').pop();
    return last && last.length > 0 ? decodeURIComponent(last) : 'embed-image';
  } catch {
    return 'embed-image';
  }
}
