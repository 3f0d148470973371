/**
 * Synthetic traffic for the soak runs: conversations on the three platforms (Discord channels,
 * the guild's thread and DMs; Slack threads and DMs; web chat conversations), users who belong
 * to them, and the delivery of one tagged message through the fake platform (or the web chat's
 * HTTP API), exactly as the platform (or the page) would send it.
 */
import { readFileSync } from 'node:fs';
import { attachment, BOT_USER, messagePayload, type UserPayload } from '../discord/fake-discord/payloads.ts';
import { CHANNEL_IDS, GUILD, THREAD } from '../discord/harness.ts';
import { eventEnvelope, postEvent } from '../slack/harness.ts';
import type { SoakBot } from './harness.ts';

export type Place =
  | { readonly platform: 'discord'; readonly kind: 'channel' | 'thread' | 'dm'; readonly channel: string; readonly owner?: number }
  | { readonly platform: 'slack'; readonly kind: 'thread' | 'dm'; readonly channel: string; readonly thread?: string; readonly owner?: number }
  /**
   * A conversation in the web chat's list, created through its API on first use; `channel` names
   * it here. The web chat has one local user (the author is the page's address), so every
   * message on it, whoever "sends" it in the scenario, is that one user's.
   */
  | { readonly platform: 'web'; readonly kind: 'chat'; readonly channel: string; readonly owner?: number };

export const FIXTURE_PNG = readFileSync('test/fixtures/images/landscape.png');

export function discordUser(n: number): UserPayload {
  return { id: String(1300000000000000000n + BigInt(n)), username: `user${n}`, discriminator: '0', global_name: null, avatar: null };
}

export const slackUser = (n: number) => `U${String(n).padStart(6, '0')}`;

/** `count` conversations over the three platforms (one in five on the web); DMs belong to one user each (the lowest ids). */
export function makePlaces(count: number): Place[] {
  const places: Place[] = [];
  let owner = 0;
  for (let i = 0; i < count; i++) {
    const n = String(i).padStart(4, '0');
    switch (i % 5) {
      case 0:
        places.push(i === 0 ? { platform: 'discord', kind: 'thread', channel: THREAD } : i % 10 === 5 ? { platform: 'web', kind: 'chat', channel: `web${n}` } : { platform: 'discord', kind: 'channel', channel: CHANNEL_IDS[1 + i] });
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
        places.push(i % 10 === 9 ? { platform: 'web', kind: 'chat', channel: `web${n}` } : { platform: 'discord', kind: 'channel', channel: CHANNEL_IDS[1 + i] });
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
  if (place.platform === 'web') {
    const id = await webConversation(bot, place);
    const form = new FormData();
    form.append('text', text);
    if (image) form.append('images', new Blob([new Uint8Array(image.data)], { type: image.contentType }), image.name);
    const res = await fetch(`${bot.web.url}api/conversations/${id}/messages`, { method: 'POST', body: form, headers: PAGE });
    const body = await res.text();
    if (res.status !== 202) throw new Error(`the web chat refused a message: ${res.status} ${body}`);
    return;
  }
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

/** The header the page sends with every request that changes something (the CSRF check). */
export const PAGE = { 'x-fromage-csrf': '1' } as const;

const webIds = new WeakMap<SoakBot, Map<string, Promise<string>>>();

/** The web chat's id of `place`, created through the API the first time it is used. */
export function webConversation(bot: SoakBot, place: Extract<Place, { platform: 'web' }>): Promise<string> {
  let ids = webIds.get(bot);
  if (!ids) webIds.set(bot, (ids = new Map()));
  let id = ids.get(place.channel);
  if (!id) {
    id = fetch(`${bot.web.url}api/conversations`, { method: 'POST', headers: PAGE }).then(async (res) => {
      if (res.status !== 201) throw new Error(`the web chat did not create a conversation: ${res.status} ${await res.text()}`);
      return ((await res.json()) as { conversation: { id: string } }).conversation.id;
    });
    ids.set(place.channel, id);
  }
  return id;
}

/** One server-sent event as the page receives it. */
export interface PageEvent {
  readonly event: string;
  readonly data: unknown;
  /** The raw `data:` text, when it was not JSON (a broken frame). */
  readonly raw?: string;
}

/**
 * A page's view of one web conversation: the event stream, read as a browser's EventSource reads
 * it (frames split on blank lines; `event:` and `data:` fields), every event kept.
 */
export interface PageWatch {
  readonly events: PageEvent[];
  /** Resolves once the stream said `ready`. */
  readonly ready: Promise<void>;
  close(): void;
}

export function watchPage(url: string): PageWatch {
  const events: PageEvent[] = [];
  const abort = new AbortController();
  let markReady!: () => void;
  const ready = new Promise<void>((r) => (markReady = r));
  void (async () => {
    const res = await fetch(url, { signal: abort.signal, headers: { accept: 'text/event-stream' } });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const frames = buffer.split(/\r\n\r\n|\n\n|\r\r/);
      buffer = frames.pop()!;
      for (const frame of frames) {
        let event = 'message';
        const data: string[] = [];
        for (const line of frame.split(/\r\n|\n|\r/)) {
          if (line.startsWith(':')) continue;
          const [field, ...rest] = line.split(':');
          const v = rest.join(':').replace(/^ /, '');
          if (field === 'event') event = v;
          else if (field === 'data') data.push(v);
        }
        if (data.length === 0) continue;
        const raw = data.join('\n');
        try {
          events.push({ event, data: JSON.parse(raw) as unknown });
        } catch {
          events.push({ event, data: undefined, raw });
        }
        if (event === 'ready') markReady();
      }
    }
  })().catch(() => undefined);
  return { events, ready, close: () => abort.abort() };
}

export function slackFile(bot: SoakBot, id: string, image: { name: string; data: Buffer; contentType: string }): Record<string, unknown> {
  const path = `/files/${id}/${encodeURIComponent(image.name)}`;
  bot.slack.files.set(path, { body: image.data, headers: { 'content-type': image.contentType } });
  const ext = image.name.split('.').pop() ?? '';
  return { id, name: image.name, mimetype: image.contentType, filetype: ext, size: image.data.length, mode: 'hosted', url_private_download: `${bot.slack.base}${path}` };
}
