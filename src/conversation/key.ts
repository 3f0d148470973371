import type { ConversationKey } from './types.ts';

/** Stable string form of a conversation key, used as the history and queue key. */
export function conversationId(key: ConversationKey): string {
  return [key.platform, key.workspace, key.channel, key.thread ?? '-'].map(encodeURIComponent).join(':');
}
