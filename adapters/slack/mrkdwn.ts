/**
 * Slack mrkdwn in both directions: what we post must not be read as markup, and what users
 * type arrives with Slack's own escapes and link syntax that the model should not see.
 */
import { showControlCharacters, splitText } from '../../src/conversation/text.ts';

/** Slack treats only these three as control characters in message text. */
export function escapeMrkdwn(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * Slack's documented ceiling for a message's `text` is 40,000 characters, but it recommends
 * staying under 4,000 for readability and truncates longer section text; we keep a margin for
 * headlines and status prefixes added later.
 */
export const SLACK_TEXT_LIMIT = 3500;
const HARD_LIMIT = 4000;

/**
 * Splits plain text into escaped mrkdwn messages. Escaping can lengthen a chunk (`&` becomes
 * five characters), so a chunk that grows past the hard limit is split again, smaller.
 */
export function renderTextMessages(text: string, limit = SLACK_TEXT_LIMIT): string[] {
  const out: string[] = [];
  // Slack keeps control characters in message text; shown, they cannot hide or reorder text.
  for (const chunk of splitText(showControlCharacters(text), limit)) {
    const escaped = escapeMrkdwn(chunk);
    if (escaped.length <= HARD_LIMIT || limit <= 16) {
      out.push(escaped);
      continue;
    }
    const smaller = Math.max(16, Math.floor((limit * HARD_LIMIT) / escaped.length) - 1);
    out.push(...renderTextMessages(chunk, smaller));
  }
  return out;
}

/**
 * Turns a user's message into plain text: the bot's own mention is removed, other mentions
 * and links become readable, and Slack's `&amp; &lt; &gt;` escapes are undone.
 */
export function plainTextFromSlack(text: string, botUserId: string | undefined): string {
  let out = text;
  if (botUserId) out = out.replace(new RegExp(`<@${botUserId}(?:\\|[^>]*)?>`, 'g'), ' ');
  out = out
    .replace(/<@([A-Z0-9]+)\|([^>]+)>/g, '@$2')
    .replace(/<@([A-Z0-9]+)>/g, '@$1')
    .replace(/<#[A-Z0-9]+\|([^>]+)>/g, '#$1')
    .replace(/<#([A-Z0-9]+)>/g, '#$1')
    .replace(/<!([a-z]+)(?:\|[^>]*)?>/g, '@$1')
    .replace(/<((?:https?|mailto):[^|>]+)\|([^>]+)>/g, '$2 ($1)')
    .replace(/<((?:https?|mailto):[^>]+)>/g, '$1')
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');
  return out.replace(/[ \t]+/g, ' ').replace(/ *\n */g, '\n').trim();
}
