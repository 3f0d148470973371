/**
 * Hostile images through the real adapters (Discord attachments on the fake CDN, Slack files on
 * the fake file host, web uploads) into the real service and the fixture engine. Property,
 * for every generated file: the bot does not crash, nothing is left unanswered (a reply in the
 * conversation, or a refusal from the web chat's HTTP API that says why), the service answers
 * exactly once and never with an internal error, memory stays bounded, and nothing the file
 * names (SVG images, HTML, scripts) is ever fetched. Replay a failure with SOAK_SEED=<seed>.
 */
import { createServer, type Server } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FromageEngine } from '../../src/model/engine.ts';
import { attachment, BOT_USER, messagePayload } from '../discord/fake-discord/payloads.ts';
import { CHANNEL_IDS, GUILD } from '../discord/harness.ts';
import { eventEnvelope, postEvent } from '../slack/harness.ts';
import { fixtureBundle, secretLeaks, startSoakBot, until, type Seen, type SoakBot } from './harness.ts';
import {
  animated,
  bomb,
  corruptExif,
  EXT,
  FORMATS,
  gifClaiming,
  HTML,
  HUGE_SVG,
  jpegClaiming,
  PDF,
  plain,
  pngClaiming,
  polyglots,
  SVG_NAMED_PNG,
  TYPE,
  type HostileFile,
} from './hostile-images.ts';
import { mentionProblems } from './mentions.ts';
import { printTable, SEED, SIZES } from './sizes.ts';
import { discordUser, slackFile } from './traffic.ts';
import sharp from 'sharp';

const KINDS = ['plain', 'truncated', 'zero', 'wrong-type', 'bomb', 'claims-huge', 'animated', 'cmyk', '16-bit', 'exif', 'svg', 'huge-svg', 'pdf', 'html', 'polyglot', 'random', 'bit-flips'] as const;
type Kind = (typeof KINDS)[number];
/** Peak memory of this process during the run may exceed its start by at most this much. */
const RSS_GROWTH_BOUND_MB = 1024;

let work: string;
let bot: SoakBot;
let canary: Server;
let canaryUrl: string;
const canaryHits: string[] = [];
let webConversation: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-soak-images-'));
  const bundle = await fixtureBundle(work);
  canary = createServer((req, res) => {
    canaryHits.push(req.url ?? '');
    res.end();
  });
  await new Promise<void>((r) => canary.listen(0, '127.0.0.1', r));
  const address = canary.address();
  canaryUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  const engine = await FromageEngine.start({ bundleDir: bundle, indexDirs: [], fetch: false, threads: 1, onLog: () => undefined });
  bot = await startSoakBot({ engine, env: { FROMAGE_USER_RATE: '1000', FROMAGE_USER_BURST: '1000', FROMAGE_THREADS: '1' } });
  const res = await fetch(`${bot.web.url}api/conversations`, { method: 'POST', headers: { 'x-fromage-csrf': '1' } });
  webConversation = ((await res.json()) as { conversation: { id: string } }).conversation.id;
}, 120_000);

afterAll(async () => {
  await bot?.close();
  await new Promise<void>((r) => (canary ? canary.close(() => r()) : r()));
  await rm(work, { recursive: true, force: true });
});

interface Case {
  readonly kind: Kind;
  readonly format: (typeof FORMATS)[number];
  readonly cut: number;
  readonly flips: readonly number[];
  readonly bytes: Uint8Array;
  readonly width: number;
  readonly height: number;
  readonly platform: 'discord' | 'slack' | 'web';
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  kind: fc.constantFrom(...KINDS),
  format: fc.constantFrom(...FORMATS),
  cut: fc.double({ min: 0, max: 1, noNaN: true }),
  flips: fc.array(fc.nat(), { maxLength: 12 }),
  bytes: fc.uint8Array({ maxLength: 4096 }),
  width: fc.integer({ min: 1, max: 700 }),
  height: fc.integer({ min: 1, max: 700 }),
  platform: fc.constantFrom('discord' as const, 'slack' as const, 'web' as const),
});

async function build(c: Case): Promise<HostileFile> {
  const named = (label: string, data: Buffer, name = `${label}.${EXT[c.format]}`, contentType = TYPE[c.format]): HostileFile => ({ label, name, contentType, data });
  switch (c.kind) {
    case 'plain':
      return named(`plain-${c.format}`, await plain(c.format, c.width, c.height));
    case 'truncated': {
      const full = await plain(c.format, c.width, c.height);
      return named(`truncated-${c.format}`, full.subarray(0, Math.floor(full.length * c.cut)));
    }
    case 'zero':
      return named('zero-byte', Buffer.alloc(0));
    case 'wrong-type':
      // JPEG bytes named .png and announced as GIF.
      return named('wrong-type', await plain('jpeg', c.width, c.height), 'photo.png', 'image/gif');
    case 'bomb':
      return named(`bomb-${c.format}`, await bomb(c.format));
    case 'claims-huge': {
      const small = await plain(c.format === 'gif' || c.format === 'jpeg' ? c.format : 'png', 16, 16);
      if (c.format === 'gif') return named('claims-huge-gif', gifClaiming(small, 65535, 65535));
      if (c.format === 'jpeg') return named('claims-huge-jpeg', jpegClaiming(small, 60000, 60000));
      return named('claims-huge-png', pngClaiming(small, 60000, 60000), 'huge.png', 'image/png');
    }
    case 'animated': {
      const f = c.format === 'webp' ? 'webp' : 'gif';
      return named(`animated-${f}`, await animated(f, 2 + (c.width % 20)), `animated.${f}`, `image/${f}`);
    }
    case 'cmyk':
      return named('cmyk-jpeg', await sharp({ create: { width: c.width, height: c.height, channels: 3, background: 'orange' } }).toColourspace('cmyk').jpeg().toBuffer(), 'cmyk.jpg', 'image/jpeg');
    case '16-bit':
      return named('16-bit-png', await sharp({ create: { width: c.width, height: c.height, channels: 3, background: 'purple' } }).toColourspace('rgb16').png().toBuffer(), 'deep.png', 'image/png');
    case 'exif':
      return named('corrupt-exif', await corruptExif((i) => c.bytes[i % Math.max(1, c.bytes.length)] ?? i * 31), 'exif.jpg', 'image/jpeg');
    case 'svg':
      return named('svg-as-png', SVG_NAMED_PNG(canaryUrl), 'vector.png', 'image/png');
    case 'huge-svg':
      return named('huge-svg-as-png', HUGE_SVG, 'vast.png', 'image/png');
    case 'pdf':
      return named('pdf-as-png', PDF, 'document.png', 'image/png');
    case 'html':
      return named('html-as-png', HTML(canaryUrl), 'page.png', 'image/png');
    case 'polyglot': {
      const [gifJs, pngZip] = await polyglots(canaryUrl);
      return c.cut < 0.5 ? named('polyglot-gif-js', gifJs, 'poly.gif', 'image/gif') : named('polyglot-png-zip', pngZip, 'poly.png', 'image/png');
    }
    case 'random':
      return named('random-bytes', Buffer.from(c.bytes), 'noise.jpg', 'image/jpeg');
    case 'bit-flips': {
      const data = Buffer.from(await plain(c.format, c.width, c.height));
      for (const f of c.flips) data[f % data.length] ^= 1 << (f % 8);
      return named(`bit-flips-${c.format}`, data);
    }
  }
}

let counter = 0;
const outcomes = new Map<string, number>();
const count = (what: string) => outcomes.set(what, (outcomes.get(what) ?? 0) + 1);

/** Sends one file; resolves with what the user was told. */
async function sendAndWait(c: Case, file: HostileFile): Promise<string> {
  const n = counter++;
  const tag = `case${n}`;
  const seenFor = () => bot.seen.find((s) => s.message.text.includes(tag));
  const checkSeen = (s: Seen): string => {
    if (s.replies.length !== 1) throw new Error(`${file.label}: ${s.replies.length} replies from the service: ${JSON.stringify(s.replies)}`);
    const r = s.replies[0];
    if (/went wrong/i.test(r.text)) throw new Error(`${file.label}: an internal error instead of a clear reply: ${r.text}`);
    if (!r.text.trim()) throw new Error(`${file.label}: an empty reply`);
    return `${r.kind}`;
  };
  if (c.platform === 'web') {
    const form = new FormData();
    form.append('text', `${tag} what is this?`);
    form.append('images', new Blob([new Uint8Array(file.data)], { type: file.contentType }), file.name);
    const res = await fetch(`${bot.web.url}api/conversations/${webConversation}/messages`, { method: 'POST', body: form, headers: { 'x-fromage-csrf': '1' } });
    const body = (await res.json()) as { error?: string };
    if (res.status >= 500) throw new Error(`${file.label}: web answered ${res.status} ${JSON.stringify(body)}`);
    if (res.status >= 400) {
      if (!body.error?.trim()) throw new Error(`${file.label}: web refused (${res.status}) without saying why`);
      return 'refused by the web chat';
    }
    await until(() => seenFor()?.finished === true, 30_000, () => `${file.label}: no answer on the web`);
    return checkSeen(seenFor()!);
  }
  if (c.platform === 'discord') {
    const channel = CHANNEL_IDS[40 + (n % 40)];
    const url = bot.discord.addCdnFile(file.name, file.data, file.contentType);
    const payload = messagePayload({
      channelId: channel,
      guildId: GUILD,
      author: discordUser(n % 7),
      content: `<@${BOT_USER.id}> ${tag} what is this?`,
      mentions: [BOT_USER],
      attachments: [attachment(url, file.name, file.data.length, file.contentType)],
    });
    bot.discord.dispatch('MESSAGE_CREATE', payload);
    const platformReply = () =>
      bot.discord.requests.some((r) => r.method === 'POST' && r.path === `/channels/${channel}/messages` && (r.body?.message_reference as { message_id?: string } | undefined)?.message_id === payload.id);
    await until(() => seenFor()?.finished === true || (seenFor() === undefined && platformReply()), 30_000, () => `${file.label}: no answer on Discord`);
    const s = seenFor();
    return s ? checkSeen(s) : 'refused by the Discord adapter';
  }
  const channel = `CF${n}`;
  const ts = `${1_800_000_000 + n}.000200`;
  const event = { type: 'app_mention', channel, user: `UF${n % 7}`, text: `<@UBOT> ${tag} what is this?`, ts, event_ts: ts, team: 'T1', files: [slackFile(bot, `FF${n}`, file)] };
  const res = await postEvent(bot.slackAdapter.httpPort ?? 0, eventEnvelope(event));
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`${file.label}: Slack's delivery was answered ${res.status}`);
  const platformReply = () => bot.slack.calls.some((call) => /^chat\.post/.test(call.method) && call.args.channel === channel);
  await until(() => seenFor()?.finished === true || (seenFor() === undefined && platformReply()), 30_000, () => `${file.label}: no answer on Slack`);
  const s = seenFor();
  return s ? checkSeen(s) : 'refused by the Slack adapter';
}

describe('fuzz: hostile images', () => {
  it(`${SIZES.fuzzImages} generated files through Discord, Slack and the web chat: each answered once, clearly; no crash; bounded memory`, async () => {
    const rssStart = process.memoryUsage().rss;
    let peak = rssStart;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    const kinds = new Map<string, number>();
    try {
      await fc.assert(
        fc.asyncProperty(caseArb, async (c) => {
          const file = await build(c);
          kinds.set(file.label, (kinds.get(file.label) ?? 0) + 1);
          count(`${c.kind}: ${await sendAndWait(c, file)}`);
        }),
        { numRuns: SIZES.fuzzImages, seed: SEED, endOnFailure: true },
      );
    } finally {
      clearInterval(sampler);
      printTable('fuzz: hostile images', [
        ['cases', counter],
        ...[...outcomes.entries()].sort().map(([k, v]) => [`  ${k}`, v] as const),
        ['fetches of URLs inside files (must be 0)', canaryHits.length],
        ['peak RSS growth', `${((peak - rssStart) / 2 ** 20).toFixed(0)} MB (bound ${RSS_GROWTH_BOUND_MB} MB)`],
        ['unhandled rejections / exceptions (must be 0)', bot.crashes.length],
      ]);
    }
    expect(canaryHits).toEqual([]);
    expect(bot.crashes).toEqual([]);
    expect(mentionProblems(bot)).toEqual([]);
    expect((peak - rssStart) / 2 ** 20).toBeLessThan(RSS_GROWTH_BOUND_MB);
    expect(await secretLeaks(bot)).toEqual([]);
  }, 600_000);
});
