/**
 * Hostile text through the real Discord, Slack and web adapters into the real service, with an
 * engine double that repeats the question back (the scenario that shows rendering and mention
 * handling best: whatever the user typed comes back in the answer). Property, for every
 * generated message: no crash or unhandled rejection, exactly one reply from the service (or
 * one from the adapter, or a web refusal that says why), never an internal error, no post on
 * either platform can ping anyone. Replay a failure with SOAK_SEED=<seed>.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BOT_USER, messagePayload } from '../discord/fake-discord/payloads.ts';
import { CHANNEL_IDS, GUILD } from '../discord/harness.ts';
import { eventEnvelope, postEvent } from '../slack/harness.ts';
import { FakeEngine } from '../support/fake-engine.ts';
import { secretLeaks, startSoakBot, until, type Seen, type SoakBot } from './harness.ts';
import { mentionChecks, mentionProblems } from './mentions.ts';
import { printTable, SEED, SIZES } from './sizes.ts';
import { discordUser } from './traffic.ts';

let bot: SoakBot;
let webConversation: string;
const engine = new FakeEngine();

beforeAll(async () => {
  bot = await startSoakBot({ engine, env: { FROMAGE_USER_RATE: '1000', FROMAGE_USER_BURST: '1000' } });
  const res = await fetch(`${bot.web.url}api/conversations`, { method: 'POST', headers: { 'x-fromage-csrf': '1' } });
  webConversation = ((await res.json()) as { conversation: { id: string } }).conversation.id;
}, 60_000);

afterAll(() => bot?.close());

const HOSTILE = [
  '@everyone', '@here', '<@1200000000000000010>', '<@!1200000000000000011>', '<@&1100000000000000301>', '<#1100000000000000100>',
  '<!channel>', '<!here>', '<!everyone>', '<!subteam^S0001|@team>', '<@U000001>', '<@U000002|bob>', '<https://evil.example|click me>',
  '```', '```js\nalert(1)\n', '`', '**', '__', '~~', '||spoiler||', '> quote\n', '# heading\n', '-# small', '[link](https://evil.example)',
  '[RET]', '<|image|>', '</s>', '<pad>', '\u0000', '\u0007', '\u001b[31m', '\r', '\u2028', '\u202e', '\u200f', '\u0301\u0301\u0301\u0301',
  '\ud800', '\udfff', '\udc00\ud800', 'עברית', 'مرحبا', 'Z̸̢͉̈́a̵l̶g̷o̴', '&lt;', '&amp;', '<b>bold</b>', '<script>x()</script>',
  'reset', 'help', 'settings words=100000', 'settings ret_scale=-1', 'retrieve ', '/fromage', '\n\n\n', '    ', '\t',
];

interface TextCase {
  readonly parts: readonly string[];
  readonly repeat: number;
  readonly platform: 'discord' | 'discord-dm' | 'slack' | 'slack-dm' | 'web';
}

const textArb: fc.Arbitrary<TextCase> = fc.record({
  parts: fc.array(fc.oneof(fc.constantFrom(...HOSTILE), fc.string({ maxLength: 12, unit: 'binary' }), fc.string({ maxLength: 8 })), { maxLength: 16 }),
  // Now and then a 100 kB message.
  repeat: fc.oneof({ weight: 9, arbitrary: fc.constant(1) }, { weight: 1, arbitrary: fc.constant(100_000) }),
  platform: fc.constantFrom('discord' as const, 'discord-dm' as const, 'slack' as const, 'slack-dm' as const, 'web' as const),
});

function textOf(c: TextCase, tag: string): string {
  const body = c.parts.join(' ');
  const text = `${tag} ${body}`;
  if (c.repeat === 1) return text;
  return `${text} ${'x'.repeat(Math.max(0, c.repeat - text.length))}`;
}

let counter = 0;
const outcomes = new Map<string, number>();
const count = (what: string) => outcomes.set(what, (outcomes.get(what) ?? 0) + 1);

function checkSeen(s: Seen, label: string): string {
  if (s.replies.length !== 1) throw new Error(`${label}: ${s.replies.length} replies: ${JSON.stringify(s.replies).slice(0, 500)}`);
  if (/went wrong/i.test(s.replies[0].text)) throw new Error(`${label}: internal error: ${s.replies[0].text}`);
  return s.replies[0].kind;
}

async function sendText(c: TextCase): Promise<string> {
  const n = counter++;
  const tag = `txt${n}`;
  const text = textOf(c, tag);
  const label = `${c.platform} ${JSON.stringify(text.slice(0, 200))}`;
  const seenFor = () => bot.seen.find((s) => s.message.intent.kind !== 'welcome' && (s.message.text.includes(tag) || (s.message.intent.kind === 'retrieve' && s.message.intent.query.includes(tag))));
  const settle = async (platformReply: () => boolean, where: string) => {
    // Messages whose text is only a command word (reset, help) lose the tag: they are found by the platform reply.
    await until(() => seenFor()?.finished === true || platformReply(), 15_000, () => `${label}: no reply on ${where}`);
    await new Promise((r) => setTimeout(r, 20));
    const s = seenFor();
    return s ? checkSeen(s, label) : `answered by the ${where} adapter`;
  };
  if (c.platform === 'web') {
    const form = new FormData();
    form.append('text', text);
    const res = await fetch(`${bot.web.url}api/conversations/${webConversation}/messages`, { method: 'POST', body: form, headers: { 'x-fromage-csrf': '1' } });
    const body = (await res.json()) as { error?: string };
    if (res.status >= 500) throw new Error(`${label}: web answered ${res.status}`);
    if (res.status >= 400) {
      if (!body.error?.trim()) throw new Error(`${label}: refused without saying why`);
      return 'refused by the web chat';
    }
    await until(() => seenFor()?.finished === true, 15_000, () => `${label}: no answer on the web`);
    return checkSeen(seenFor()!, label);
  }
  if (c.platform.startsWith('discord')) {
    const dm = c.platform === 'discord-dm';
    const channel = dm ? String(1500000000000000000n + BigInt(n % 5)) : CHANNEL_IDS[40 + (n % 40)];
    const payload = dm
      ? messagePayload({ channelId: channel, author: discordUser(50 + (n % 5)), content: text })
      : messagePayload({ channelId: channel, guildId: GUILD, author: discordUser(n % 7), content: `<@${BOT_USER.id}> ${text}`, mentions: [BOT_USER] });
    bot.discord.dispatch('MESSAGE_CREATE', payload);
    return settle(() => bot.discord.requests.some((r) => r.method === 'POST' && (r.body?.message_reference as { message_id?: string } | undefined)?.message_id === payload.id), 'Discord');
  }
  const dm = c.platform === 'slack-dm';
  const channel = dm ? `DT${n}` : `CT${n}`;
  const ts = `${1_900_000_000 + n}.000300`;
  const event = dm
    ? { type: 'message', channel_type: 'im', channel, user: `UT${n % 5}`, text, ts, event_ts: ts }
    : { type: 'app_mention', channel, user: `UT${n % 7}`, text: `<@UBOT> ${text}`, ts, event_ts: ts, team: 'T1' };
  const res = await postEvent(bot.slackAdapter.httpPort ?? 0, eventEnvelope(event));
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`${label}: Slack's delivery was answered ${res.status}`);
  return settle(() => bot.slack.calls.some((call) => /^chat\.post/.test(call.method) && call.args.channel === channel), 'Slack');
}

describe('fuzz: hostile text', () => {
  it(`${SIZES.fuzzText} generated messages: each answered once, clearly; no mention pings; no crash`, async () => {
    const rssStart = process.memoryUsage().rss;
    let peak = rssStart;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    try {
      await fc.assert(
        fc.asyncProperty(textArb, async (c) => {
          count(`${c.platform}: ${await sendText(c)}`);
        }),
        { numRuns: SIZES.fuzzText, seed: SEED, endOnFailure: true },
      );
    } finally {
      clearInterval(sampler);
      printTable('fuzz: hostile text', [
        ['messages', counter],
        ...[...outcomes.entries()].sort().map(([k, v]) => [`  ${k}`, v] as const),
        ['posts that could ping (must be 0)', mentionProblems(bot).length],
        ['posts checked (Discord / Slack)', `${mentionChecks.discord} / ${mentionChecks.slack}`],
        ['peak RSS growth', `${((peak - rssStart) / 2 ** 20).toFixed(0)} MB`],
        ['unhandled rejections / exceptions (must be 0)', bot.crashes.length],
      ]);
    }
    expect(mentionProblems(bot)).toEqual([]);
    expect(bot.crashes).toEqual([]);
    expect(await secretLeaks(bot)).toEqual([]);
  }, 600_000);

  it('what users typed stays text: no special token reaches the model, nothing becomes HTML on the web chat', async () => {
    // Whatever the generator drew, the web chat gets one of each at least.
    await sendText({ parts: ['<script>x()</script>', '<b>bold</b>', '[RET]', '<|image|>', '\u0000', '\u001b[31m', '\u202e'], repeat: 1, platform: 'web' });
    // Every question the model was asked (each is the last text of its prompt): a typed [RET],
    // <|image|>, </s> or <pad> arrives broken by a WORD JOINER, never as the token's spelling.
    const questions = engine.calls.map((c) => /Q: ([\s\S]*)\nA:$/.exec(c.prompt.filter((p) => p.type === 'text').map((p) => (p.type === 'text' ? p.text : '')).at(-1) ?? '')?.[1] ?? '');
    const specials = questions.filter((q) => /\[RET\]|<\|image\|>|<\/s>|<pad>/.test(q));
    // The web chat's transcript comes as JSON, and its saved page holds no markup a user wrote.
    const res = await fetch(`${bot.web.url}api/conversations/${webConversation}`);
    const { entries } = (await res.json()) as { entries: { role: string; segments: { type: string; text?: string }[] }[] };
    const html = await (await fetch(`${bot.web.url}api/conversations/${webConversation}/export`)).text();
    const MARKUP = /<(?!\/?(?:html|head|meta|title|style|body|h1|p|section|div|figure|img|figcaption|a)[\s>]|!doctype html>)/gi;
    const foreign = [...html.matchAll(MARKUP)].map((m) => html.slice(m.index, m.index + 40));
    const typedScript = entries.filter((e) => e.role === 'user' && e.segments.some((s) => s.text?.includes('<script>'))).length;
    printTable('fuzz: typed text stays text', [
      ['questions the model read', questions.length],
      ['  holding a special token typed by a user (must be 0)', specials.length],
      ['web chat entries (transcript is JSON)', `${entries.length} (${res.headers.get('content-type')})`],
      ['  questions with a typed <script>', typedScript],
      ['markup in the saved page that a user or the model wrote (must be 0)', foreign.length],
    ]);
    expect(questions.length).toBeGreaterThan(0);
    expect(specials).toEqual([]);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(entries.length).toBeGreaterThan(0);
    expect(foreign).toEqual([]);
    expect(typedScript).toBeGreaterThan(0);
    expect(html).toContain('&lt;script&gt;x()&lt;/script&gt;');
  }, 600_000);
});
