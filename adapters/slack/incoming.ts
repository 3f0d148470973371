/**
 * Slack message events to `IncomingMessage`s. Decides which events are for the bot (mentions,
 * DMs), which conversation they belong to (the thread, or the whole DM), and where the
 * answer goes.
 */
import type { IncomingMessage } from '../../src/conversation/types.ts';
import { intentFromMention } from './intents.ts';
import { slackImageInput, type SlackImageDeps } from './images.ts';
import { plainTextFromSlack } from './mrkdwn.ts';
import type { MessageEvent } from './payloads.ts';
import type { Destination } from './web-api.ts';

/** Subtypes that are a person's new message; edits, joins, deletions and the like are not. */
const USER_MESSAGE_SUBTYPES = new Set(['file_share', 'thread_broadcast']);

export interface Routed {
  readonly message: IncomingMessage;
  readonly destination: Destination;
}

export function isDirectMessage(event: MessageEvent): boolean {
  return event.channel_type === 'im' || (event.type === 'message' && event.channel.startsWith('D') && !event.channel_type);
}

/** Null when the event is not addressed to the bot or not a person's message. */
export function routeMessageEvent(
  event: MessageEvent,
  ctx: { readonly teamId: string; readonly botUserId: string | undefined; readonly images: SlackImageDeps; readonly now?: Date },
): Routed | null {
  if (!event.user || event.bot_id) return null;
  if (event.subtype && !USER_MESSAGE_SUBTYPES.has(event.subtype)) return null;
  const dm = isDirectMessage(event);
  const rawText = event.text ?? '';
  // Channel messages reach us only if the workspace also subscribed message.channels; then
  // only mentions count (the app_mention twin is deduplicated by the caller).
  if (event.type === 'message' && !dm && !(ctx.botUserId && rawText.includes(`<@${ctx.botUserId}`))) return null;

  const { intent, text } = intentFromMention(plainTextFromSlack(rawText, ctx.botUserId));
  const threadTs = event.thread_ts ?? undefined;
  // A DM is one conversation; a channel mention starts (or continues) a thread.
  const key = dm
    ? { platform: 'slack' as const, workspace: 'dm', channel: event.channel }
    : { platform: 'slack' as const, workspace: event.team ?? ctx.teamId, channel: event.channel, thread: threadTs ?? event.ts };
  const destination: Destination = dm ? { channel: event.channel, threadTs } : { channel: event.channel, threadTs: threadTs ?? event.ts };
  const message: IncomingMessage = {
    key,
    id: event.ts,
    author: { id: event.user, name: event.user },
    text,
    images: (event.files ?? []).map((file) => slackImageInput(file, ctx.images)),
    intent,
    replyTo: threadTs && threadTs !== event.ts ? threadTs : undefined,
    receivedAt: ctx.now ?? new Date(),
  };
  return { message, destination };
}

/** The same user message can arrive as app_mention and as message/file_share. */
export function messageIdentity(event: MessageEvent): string {
  return `${event.channel}:${event.ts}`;
}
