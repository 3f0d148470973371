/**
 * Turns a platform-neutral `Reply` into Discord messages, keeping the model's order: Discord
 * shows a message's text above its attachments, so each text chunk opens a message and the
 * images that follow it ride along as that message's attachments.
 */
import type { Reply, ReplyImage } from '../../src/conversation/types.ts';
import { showControlCharacters, splitText } from '../../src/conversation/text.ts';

/** Discord's limits per message. */
export const MAX_CONTENT = 2000;
export const MAX_FILES = 10;

export interface OutgoingMessage {
  readonly content?: string;
  readonly files: ReplyImage[];
}

export function renderReply(reply: Reply): OutgoingMessage[] {
  const out: { content?: string; files: ReplyImage[] }[] = [];
  for (const segment of reply.segments) {
    if (segment.type === 'text') {
      // Discord passes control characters through to clients, where they are invisible or odd.
      for (const chunk of splitText(showControlCharacters(segment.text), MAX_CONTENT)) out.push({ content: chunk, files: [] });
    } else {
      for (const image of segment.images) {
        const last = out[out.length - 1];
        if (last && last.files.length < MAX_FILES) last.files.push(image);
        else out.push({ files: [image] });
      }
    }
  }
  return out.filter((m) => (m.content !== undefined && m.content.trim() !== '') || m.files.length > 0);
}

/** Plain text of a reply, for places that cannot carry attachments (ephemeral errors). */
export function replyText(reply: Reply): string {
  return showControlCharacters(
    reply.segments
      .map((s) => (s.type === 'text' ? s.text : ''))
      .join('\n')
      .trim(),
  );
}
