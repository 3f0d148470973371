/**
 * Mutated platform payloads into the real adapters: Slack events and slash commands (bad JSON
 * under a valid signature, missing fields, wrong types, huge blocks, garbage bodies, forged
 * signatures) and Discord interactions (missing options, unknown subcommands and commands,
 * attachments whose URLs redirect elsewhere or never answer). Property: the bot neither crashes
 * nor leaves an unhandled rejection; Slack's HTTP requests are never answered with a 5xx (Slack
 * would retry them); forged requests are refused; each Discord interaction is answered (an
 * acknowledgement or a reply, never "the application did not respond"); a redirect never carries
 * a platform token to another host; and a normal message afterwards is still answered.
 */
import { createServer, type Server } from 'node:http';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ALICE, attachment, interactionPayload } from '../discord/fake-discord/payloads.ts';
import { GUILD, CHANNEL_IDS } from '../discord/harness.ts';
import { BOT_TOKEN } from '../slack/fake-slack.ts';
import { eventEnvelope, postEvent, sign } from '../slack/harness.ts';
import { FakeEngine } from '../support/fake-engine.ts';
import { secretLeaks, SECRETS, startSoakBot, until, type SoakBot } from './harness.ts';
import { mentionProblems } from './mentions.ts';
import { printTable, SEED, SIZES } from './sizes.ts';
import { deliver, FIXTURE_PNG, makePlaces } from './traffic.ts';

let bot: SoakBot;
let foreign: Server;
let foreignUrl: string;
const foreignRequests: { url: string; authorization?: string }[] = [];

beforeAll(async () => {
  foreign = createServer((req, res) => {
    foreignRequests.push({ url: req.url ?? '', authorization: req.headers.authorization });
    if (req.url?.startsWith('/hang')) return; // never answers
    if (req.url?.startsWith('/redirect')) {
      res.writeHead(302, { location: `${foreignUrl}/img${req.url.slice('/redirect'.length)}` });
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': 'image/png' });
    res.end(FIXTURE_PNG);
  });
  await new Promise<void>((r) => foreign.listen(0, '127.0.0.1', r));
  const address = foreign.address();
  foreignUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  bot = await startSoakBot({ engine: new FakeEngine(), env: { FROMAGE_USER_RATE: '1000', FROMAGE_USER_BURST: '1000' } });
}, 60_000);

afterAll(async () => {
  await bot?.close();
  foreign?.closeAllConnections();
  await new Promise<void>((r) => (foreign ? foreign.close(() => r()) : r()));
});

const outcomes = new Map<string, number>();
const count = (what: string) => outcomes.set(what, (outcomes.get(what) ?? 0) + 1);
let n = 0;

/** Deletes, retypes or blows up fields of a valid payload. */
const mutation = fc.record({
  drop: fc.array(fc.constantFrom('type', 'user', 'text', 'channel', 'ts', 'event_ts', 'team', 'files', 'thread_ts', 'channel_type', 'event', 'event_id', 'authorizations'), { maxLength: 3 }),
  retype: fc.array(fc.tuple(fc.constantFrom('user', 'text', 'channel', 'ts', 'files', 'blocks', 'thread_ts'), fc.oneof(fc.constant(null), fc.integer(), fc.constant([]), fc.constant({}), fc.string({ unit: 'binary', maxLength: 20 }))), { maxLength: 3 }),
  hugeBlocks: fc.boolean(),
});

type SlackCase =
  | { kind: 'mutated-event'; m: { drop: string[]; retype: [string, unknown][]; hugeBlocks: boolean } }
  | { kind: 'bad-json'; body: string }
  | { kind: 'garbage'; body: Uint8Array; contentType: string }
  | { kind: 'forged' }
  | { kind: 'slash'; fields: Record<string, string>; drop: string[] }
  | { kind: 'url-verification'; challenge?: unknown }
  | { kind: 'redirected-file'; hang: boolean };

const slackCase: fc.Arbitrary<SlackCase> = fc.oneof(
  mutation.map((m) => ({ kind: 'mutated-event' as const, m })),
  fc.string({ maxLength: 200 }).map((s) => ({ kind: 'bad-json' as const, body: `{"type":"event_callback","event":${s}` })),
  fc.record({ body: fc.uint8Array({ maxLength: 2048 }), contentType: fc.constantFrom('application/json', 'application/x-www-form-urlencoded', 'text/plain', 'multipart/form-data') }).map((g) => ({ kind: 'garbage' as const, ...g })),
  fc.constant({ kind: 'forged' as const }),
  fc
    .record({
      command: fc.constantFrom('/fromage', '/other', '/FROMAGE', ''),
      text: fc.oneof(fc.constantFrom('retrieve', 'retrieve a cat', 'settings words=abc', 'settings', 'reset', 'help', 'ask', 'nonsense', ''), fc.string({ maxLength: 60 }), fc.constant('x'.repeat(50_000))),
      drop: fc.array(fc.constantFrom('command', 'text', 'user_id', 'channel_id', 'response_url', 'team_id', 'trigger_id'), { maxLength: 3 }),
    })
    .map(({ command, text, drop }) => ({ kind: 'slash' as const, fields: { command, text }, drop })),
  fc.option(fc.oneof(fc.string(), fc.integer(), fc.constant({})), { nil: undefined }).map((challenge) => ({ kind: 'url-verification' as const, challenge })),
  fc.boolean().map((hang) => ({ kind: 'redirected-file' as const, hang })),
);

async function slackRequest(body: string | Uint8Array, contentType: string, signed = true): Promise<number> {
  const text = typeof body === 'string' ? body : Buffer.from(body).toString('latin1');
  const headers = { 'content-type': contentType, ...(signed ? sign(text) : sign(text, undefined, 'not-the-secret')) };
  const res = await fetch(`http://127.0.0.1:${bot.slackAdapter.httpPort}/slack/events`, { method: 'POST', headers, body: typeof body === 'string' ? body : Buffer.from(text, 'latin1') });
  await res.arrayBuffer();
  return res.status;
}

async function runSlack(c: SlackCase): Promise<string> {
  const id = n++;
  const ts = `${2_000_000_000 + id}.000400`;
  const valid = { type: 'app_mention', user: `UP${id % 5}`, text: `<@UBOT> pay${id} hello`, channel: `CP${id}`, ts, event_ts: ts, team: 'T1' };
  let status: number;
  switch (c.kind) {
    case 'mutated-event': {
      const event: Record<string, unknown> = { ...valid };
      const envelope = eventEnvelope(event) as Record<string, unknown>;
      for (const k of c.m.drop) {
        delete event[k];
        delete envelope[k];
      }
      for (const [k, v] of c.m.retype) event[k] = v;
      if (c.m.hugeBlocks) event.blocks = Array.from({ length: 5_000 }, (_, i) => ({ type: 'rich_text', block_id: `b${i}`, elements: [{ type: 'rich_text_section', elements: [{ type: 'user', user_id: 'U1' }] }] }));
      status = await slackRequest(JSON.stringify(envelope), 'application/json');
      break;
    }
    case 'bad-json':
      status = await slackRequest(c.body, 'application/json');
      break;
    case 'garbage':
      status = await slackRequest(c.body, c.contentType);
      break;
    case 'forged': {
      status = await slackRequest(JSON.stringify(eventEnvelope(valid)), 'application/json', false);
      if (status < 400) throw new Error(`a forged signature was accepted (${status})`);
      await new Promise((r) => setTimeout(r, 30));
      if (bot.seen.some((s) => String(s.message.text).includes(`pay${id}`))) throw new Error('a forged event reached the service');
      break;
    }
    case 'slash': {
      const fields: Record<string, string> = { ...c.fields, team_id: 'T1', channel_id: `CP${id}`, channel_name: 'general', user_id: `UP${id % 5}`, user_name: 'ada', trigger_id: `trig-${id}`, response_url: bot.slack.responseUrl(`p${id}`), token: 'legacy' };
      for (const k of c.drop) delete fields[k];
      status = await slackRequest(new URLSearchParams(fields).toString(), 'application/x-www-form-urlencoded');
      break;
    }
    case 'url-verification':
      status = await slackRequest(JSON.stringify({ type: 'url_verification', token: 'legacy', ...(c.challenge === undefined ? {} : { challenge: c.challenge }) }), 'application/json');
      break;
    case 'redirected-file': {
      // A file whose download redirects to another host (or to one that never answers).
      const path = `/files/FR${id}/photo.png`;
      bot.slack.files.set(path, { status: 302, headers: { location: `${foreignUrl}/${c.hang ? 'hang' : 'img'}/${id}.png` } });
      const file = { id: `FR${id}`, name: 'photo.png', mimetype: 'image/png', filetype: 'png', size: FIXTURE_PNG.length, mode: 'hosted', url_private_download: `${bot.slack.base}${path}` };
      const res = await postEvent(bot.slackAdapter.httpPort ?? 0, eventEnvelope({ ...valid, files: [file] }));
      await res.arrayBuffer();
      status = res.status;
      await until(() => bot.seen.some((s) => String(s.message.text).includes(`pay${id}`) && s.finished) || bot.slack.calls.some((x) => /^chat\.post/.test(x.method) && x.args.channel === `CP${id}`), 30_000, () => `no answer to a message whose file redirects (${c.hang ? 'to a host that hangs' : 'to another host'})`);
      break;
    }
  }
  if (status >= 500) throw new Error(`Slack request (${c.kind}) answered ${status}: Slack would retry it`);
  return `slack ${c.kind}: ${status}`;
}

type DiscordCase = { sub: string; command: string; options: { name: string; type: number; value: string | number | boolean }[]; attach?: 'redirect' | 'hang' | 'ok' };

const discordCase: fc.Arbitrary<DiscordCase> = fc.record({
  sub: fc.constantFrom('ask', 'retrieve', 'reset', 'settings', 'help', 'unknown', ''),
  command: fc.oneof({ weight: 5, arbitrary: fc.constant('fromage') }, { weight: 1, arbitrary: fc.constantFrom('other', 'FROMAGE', '') }),
  options: fc.array(
    fc.record({
      name: fc.constantFrom('prompt', 'query', 'count', 'image', 'words', 'ret_scale', 'temperature', 'reset', 'bogus'),
      type: fc.constantFrom(3, 4, 5, 10, 11),
      value: fc.oneof(fc.string({ maxLength: 30 }), fc.integer(), fc.boolean(), fc.double({ noNaN: false })),
    }),
    { maxLength: 3 },
  ),
  attach: fc.option(fc.constantFrom('redirect' as const, 'ok' as const, 'hang' as const), { nil: undefined }),
});

async function runDiscord(c: DiscordCase): Promise<string> {
  const id = n++;
  const attachments = [];
  const options = [...c.options];
  if (c.attach) {
    const url = c.attach === 'ok' ? bot.discord.addCdnFile('p.png', FIXTURE_PNG, 'image/png') : `${foreignUrl}/${c.attach === 'hang' ? 'hang' : 'redirect'}/${id}.png`;
    const a = attachment(url, 'p.png', FIXTURE_PNG.length, 'image/png');
    attachments.push(a);
    options.push({ name: 'image', type: 11, value: a.id });
  }
  const payload = interactionPayload({ guildId: GUILD, channel: { id: CHANNEL_IDS[10 + (id % 20)], type: 0 }, user: ALICE, subcommand: c.sub, options, attachments });
  (payload.data as { name: string }).name = c.command;
  bot.discord.dispatch('INTERACTION_CREATE', payload);
  const callback = () => bot.discord.requests.some((r) => r.method === 'POST' && r.path === `/interactions/${payload.id}/${payload.token}/callback`);
  // Discord gives an application 3 s to acknowledge; the adapter defers before any slow work. The
  // test checks that it is acknowledged at all, with a margin for a loaded CI machine.
  await until(callback, 10_000, () => `interaction /${c.command} ${c.sub} ${JSON.stringify(c.options)} was never acknowledged`);
  const ack = bot.discord.requests.find((r) => r.method === 'POST' && r.path === `/interactions/${payload.id}/${payload.token}/callback`);
  const what = `discord /${c.command || '(empty)'} ${c.sub || '(none)'}${c.attach ? ` + ${c.attach} attachment` : ''}`;
  if (ack?.body?.type !== 5) return `${what}: answered at once`;
  // Deferred ("thinking…"): the answer or a refusal must follow, also when a download hangs (2 s deadline).
  await until(() => bot.discord.requests.some((r) => r.path.startsWith(`/webhooks/`) && r.path.includes(`/${payload.token}`)), 10_000, () => `${what}: deferred, then never answered`);
  return `${what}: deferred, then answered`;
}

describe('fuzz: platform payloads', () => {
  it(`${SIZES.fuzzPayloads} mutated Slack requests and Discord interactions: no crash, no 5xx, every interaction acknowledged, tokens stay home`, async () => {
    const places = makePlaces(5);
    let sentinels = 0;
    try {
      await fc.assert(
        fc.asyncProperty(fc.oneof(slackCase.map((s) => ({ slack: s })), discordCase.map((d) => ({ discord: d }))), async (c) => {
          count('slack' in c ? await runSlack(c.slack) : await runDiscord(c.discord));
          // Every 25 cases a normal message must still be answered.
          if (n % 25 === 0) {
            const before = bot.seen.length;
            await deliver(bot, places[n % 5], 1, `sentinel ${n}`);
            await until(() => bot.seen.slice(before).some((s) => String(s.message.text).includes(`sentinel ${n}`) && s.finished && s.replies.length === 1), 10_000, () => `a normal message after ${n} mutated payloads was not answered`);
            sentinels++;
          }
        }),
        { numRuns: SIZES.fuzzPayloads, seed: SEED, endOnFailure: true },
      );
    } finally {
      const grouped = new Map<string, number>();
      for (const [k, v] of outcomes) {
        const key = k.replace(/: \d+$/, (m) => (Number(m.slice(2)) >= 400 ? ': 4xx' : ': 2xx'));
        grouped.set(key, (grouped.get(key) ?? 0) + v);
      }
      printTable('fuzz: platform payloads', [
        ['payloads', n],
        ...[...grouped.entries()].sort().map(([k, v]) => [`  ${k}`, v] as const),
        ['normal messages answered in between', sentinels],
        ['requests to other hosts carrying a token (must be 0)', foreignRequests.filter((r) => r.authorization).length],
        ['unhandled rejections / exceptions (must be 0)', bot.crashes.length],
      ]);
    }
    // Error paths that name the platform's answer in logs and replies: a revoked Slack token, a deleted Discord channel.
    bot.slack.failures.set('chat.postMessage', 'invalid_auth');
    const places2 = makePlaces(5);
    const logsBefore = bot.logLines.length;
    await deliver(bot, places2[2], 3, 'after the token was revoked');
    bot.discord.deletedChannels.add(places2[4].channel);
    await deliver(bot, places2[4], 3, 'in a deleted channel');
    await until(() => bot.seen.filter((s) => /revoked|deleted channel/.test(s.message.text) && s.finished).length === 2, 10_000, () => 'the error-path messages were not handled');
    await until(() => bot.logLines.slice(logsBefore).some((l) => /invalid_auth/.test(l)), 5_000, () => 'the revoked token was not logged');
    bot.slack.failures.delete('chat.postMessage');
    expect(bot.crashes).toEqual([]);
    expect(foreignRequests.filter((r) => r.authorization?.includes(BOT_TOKEN) || r.authorization?.includes(SECRETS.DISCORD_TOKEN))).toEqual([]);
    expect(mentionProblems(bot)).toEqual([]);
    expect(await secretLeaks(bot)).toEqual([]);
  }, 600_000);
});
