/**
 * Synthetic traffic for the soak runs: conversations on both platforms (Discord channels, the
 * guild's thread and DMs; Slack threads and DMs), users who belong to them, and the delivery of
 * one tagged message through the fake platform, exactly as the platform would send it.
 */
import { readFileSync } from 'node:fs';
import { attachment, BOT_USER, messagePayload, type UserPayload } from '../discord/fake-discord/payloads.ts';
import { CHANNEL_IDS, GUILD, THREAD } from '../discord/harness.ts';
import { eventEnvelope, postEvent } from '../slack/harness.ts';
import type { SoakBot } from './harness.ts';

export type Place =
  | { readonly platform: 'discord'; readonly kind: 'channel' | 'thread' | 'dm'; readonly channel: string; readonly owner?: number }
  | { readonly platform: 'slack'; readonly kind: 'thread' | 'dm'; readonly channel: string; readonly thread?: string; readonly owner?: number };

export const FIXTURE_PNG = readFileSync('test/fixtures/images/landscape.png');

export function discordUser(n: number): UserPayload {
  return { id: String(1300000000000000000n + BigInt(n)), username: `user${n}`, discriminator: '0', global_name: null, avatar: null };
}

export const slackUser = (n: number) => `U${String(n).padStart(6, '0')}`;

/** `count` conversations over both platforms; DMs belong to one user each (the lowest ids). */
export function makePlaces(count: number): Place[] {
  const places: Place[] = [];
  let owner = 0;
  for (let i = 0; i < count; i++) {
    const n = String(i).padStart(4, '0');
    switch (i % 5) {
      case 0:
        places.push(i === 0 ? { platform: 'discord', kind: 'thread', channel: THREAD } : { platform: 'discord', kind: 'channel', channel: CHANNEL_IDS[1 + i] });
        break;
      case 1:
        places.push({ platform: 'discord', kind: 'dm', channel: String(1400000000000000000n + BigInt(i)), owner: owner++ });
        break;
      case 2:
        places.push({ platform: 'slack', kind: 'thread', channel: `C${n}`, thread: `1699999999.${n}00` });
        break;
      case 3:
        places.push({ platform: 'slack', kind: 'dm', channel: `D${n}`, owner: owner++ });
        break;
      default:
        places.push({ platform: 'discord', kind: 'channel', channel: CHANNEL_IDS[1 + i] });
    }
  }
  return places;
}

let slackTs = 1_700_000_000;

/** Sends `text` (with an image when asked) from user `user` in `place`, as the platform would. */
export async function deliver(
  bot: SoakBot,
  place: Place,
  user: number,
  text: string,
  image?: { name: string; data: Buffer; contentType: string },
  /** Slack only: deliver the same event again, as Slack does when it thinks the first was not acknowledged. */
  redeliver = false,
): Promise<void> {
  if (place.platform === 'discord') {
    const author = discordUser(user);
    const attachments = image ? [attachment(bot.discord.addCdnFile(image.name, image.data, image.contentType), image.name, image.data.length, image.contentType)] : [];
    const payload =
      place.kind === 'dm'
        ? messagePayload({ channelId: place.channel, author, content: text, attachments })
        : messagePayload({ channelId: place.channel, guildId: GUILD, author, content: `<@${BOT_USER.id}> ${text}`, mentions: [BOT_USER], channelType: place.kind === 'thread' ? 11 : 0, attachments });
    bot.discord.dispatch('MESSAGE_CREATE', payload);
    return;
  }
  const ts = `${slackTs++}.000100`;
  const files = image ? [slackFile(bot, `F${ts.replace('.', '')}`, image)] : undefined;
  const event =
    place.kind === 'dm'
      ? { type: 'message', channel_type: 'im', channel: place.channel, user: slackUser(user), text, ts, event_ts: ts, ...(files ? { files, subtype: 'file_share' } : {}) }
      : { type: 'app_mention', channel: place.channel, user: slackUser(user), text: `<@UBOT> ${text}`, ts, event_ts: ts, thread_ts: place.thread, team: 'T1', ...(files ? { files } : {}) };
  const envelope = eventEnvelope(event);
  const res = await postEvent(bot.slackAdapter.httpPort ?? 0, envelope);
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`Slack's request was refused: ${res.status}`);
  if (redeliver) {
    const again = await postEvent(bot.slackAdapter.httpPort ?? 0, envelope, { headers: { 'x-slack-retry-num': '1', 'x-slack-retry-reason': 'http_timeout' } });
    await again.arrayBuffer();
  }
}

export function slackFile(bot: SoakBot, id: string, image: { name: string; data: Buffer; contentType: string }): Record<string, unknown> {
  const path = `/files/${id}/${encodeURIComponent(image.name)}`;
  bot.slack.files.set(path, { body: image.data, headers: { 'content-type': image.contentType } });
  const ext = image.name.split('.').pop() ?? '';
  return { id, name: image.name, mimetype: image.contentType, filetype: ext, size: image.data.length, mode: 'hosted', url_private_download: `${bot.slack.base}${path}` };
}
