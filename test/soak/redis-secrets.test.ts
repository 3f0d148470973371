/**
 * Secrets with Redis: `fromage serve` as the gateway (Discord through the loopback fake, and the
 * web chat) and one `fromage worker`, both real processes, against a real redis-server that
 * requires a password (test/remote's helpers start them). Traffic on both platforms, retrieval
 * included, and Redis stopped and started again mid-run, so the reconnect and error paths log
 * too. Promise: neither the Redis password (as written or URL-encoded) nor the full
 * FROMAGE_REDIS_URL appears in any log line of either process, any reply, what the platforms
 * received, the web chat's pages, /healthz or /metrics; nor do the Discord and Hugging Face
 * tokens both processes were given. Every message still gets exactly one reply.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { APP_ID, BOT_USER, messagePayload } from '../discord/fake-discord/payloads.ts';
import type { FakeDiscord } from '../discord/fake-discord/server.ts';
import { CHANNEL_IDS, createFake, GUILD } from '../discord/harness.ts';
import { prepareFixtures, startProc, startWorkerProc, type Fixtures, type Proc } from '../remote/cluster.ts';
import { freePort, startTestRedis, type TestRedis } from '../remote/redis-server.ts';
import { leakedSecrets, SECRETS, until, webPages } from './harness.ts';
import { printTable, SIZES } from './sizes.ts';
import { discordUser, FIXTURE_PNG, PAGE } from './traffic.ts';

/** Characters that URL-encoding changes, so both spellings are looked for. */
const PASSWORD = 'soak-redis-pass+w/rd=7c4e91d2';

let work: string;
let f: Fixtures;
let redis: TestRedis;
let discord: FakeDiscord;
const procs: Proc[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-soak-redis-'));
  f = await prepareFixtures(work);
  redis = await startTestRedis({ password: PASSWORD });
  discord = createFake({ heartbeatIntervalMs: 5_000 });
  await discord.start();
}, 120_000);

afterAll(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await Promise.all(procs.map((p) => p.exited));
  await discord?.close();
  await redis?.destroy();
  await f?.images.close();
  await rm(work, { recursive: true, force: true });
});

describe('secrets with Redis', () => {
  it(`gateway and worker against a password-protected Redis, ${SIZES.redisMessages} messages and a Redis restart: the password is nowhere`, async () => {
    const worker = await startWorkerProc(f, work, redis.url, { name: 'w1', batch: 2, env: { LOG_LEVEL: 'debug', HF_TOKEN: SECRETS.HF_TOKEN } });
    procs.push(worker);
    const webPort = await freePort();
    const httpPort = await freePort();
    const serve = startProc(['src/cli.ts', 'serve'], {
      FROMAGE_REDIS_URL: redis.url,
      FROMAGE_BUNDLE: f.bundle,
      FROMAGE_DATA_DIR: join(work, 'gateway-data'),
      FROMAGE_WEB_PORT: String(webPort),
      HTTP_PORT: String(httpPort),
      DISCORD_TOKEN: SECRETS.DISCORD_TOKEN,
      DISCORD_APPLICATION_ID: APP_ID,
      DISCORD_API_BASE: discord.apiBase,
      HF_TOKEN: SECRETS.HF_TOKEN,
      FROMAGE_USER_RATE: '1000',
      FROMAGE_USER_BURST: '1000',
      FROMAGE_QUEUE_LIMIT: '1000',
      LOG_LEVEL: 'debug',
    });
    procs.push(serve);
    const web = `http://127.0.0.1:${webPort}/`;
    const health = () => fetch(`http://127.0.0.1:${httpPort}/healthz`).then((r) => r.text());
    for (const deadline = Date.now() + 90_000; !/"status":"ready"/.test(await health().catch(() => '')); ) {
      if (Date.now() > deadline || serve.child.exitCode !== null) throw new Error(`the gateway did not get ready:\n${serve.output().slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    // Discord's client connected to the fake.
    await until(() => discord.connections.length > 0, 30_000, () => 'the gateway never connected to Discord');

    const conversations: string[] = [];
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${web}api/conversations`, { method: 'POST', headers: PAGE });
      conversations.push(((await res.json()) as { conversation: { id: string } }).conversation.id);
    }
    const webSent: string[] = [];
    const discordSent: string[] = [];
    const send = async (i: number) => {
      const tag = `rmsg${i}`;
      if (i % 2 === 0) {
        const form = new FormData();
        form.append('text', i % 10 === 4 ? `/retrieve ${tag} a dog` : `${tag} what is this?`);
        if (i % 10 === 2) form.append('images', new Blob([new Uint8Array(FIXTURE_PNG)], { type: 'image/png' }), 'photo.png');
        const res = await fetch(`${web}api/conversations/${conversations[i % 4 === 0 ? 0 : 1]}/messages`, { method: 'POST', body: form, headers: PAGE });
        await res.arrayBuffer();
        if (res.status !== 202) throw new Error(`the web chat refused ${tag}: ${res.status}`);
        webSent.push(tag);
      } else {
        const payload = messagePayload({ channelId: CHANNEL_IDS[1 + (i % 3)], guildId: GUILD, author: discordUser(i % 5), content: `<@${BOT_USER.id}> ${tag} what is this?`, mentions: [BOT_USER] });
        discord.dispatch('MESSAGE_CREATE', payload);
        discordSent.push(payload.id);
      }
    };
    const half = Math.floor(SIZES.redisMessages / 2);
    for (let i = 0; i < half; i++) await send(i);
    // Redis goes away under traffic and comes back: both processes log the reconnects.
    await redis.stop();
    for (let i = half; i < half + 4; i++) await send(i);
    await new Promise((r) => setTimeout(r, 2_000));
    await redis.start();
    for (let i = half + 4; i < SIZES.redisMessages; i++) await send(i);

    type Entry = { role: string; kind: string; exchange: number; segments: { text?: string }[] };
    const transcripts = async () => Promise.all(conversations.map(async (id) => ((await (await fetch(`${web}api/conversations/${id}`)).json()) as { entries: Entry[] }).entries));
    const discordReplies = (id: string) =>
      discord.requests.filter((r) => r.method === 'POST' && (r.body?.message_reference as { message_id?: string } | undefined)?.message_id === id).length;
    let entries: Entry[] = [];
    const webAnswered = () => entries.filter((e) => e.role === 'bot').length;
    // Every message answered (or the deadline passed: then the counts below say which were not).
    for (const deadline = Date.now() + 120_000; Date.now() < deadline; ) {
      entries = (await transcripts()).flat();
      if (discordSent.every((id) => discordReplies(id) > 0) && webAnswered() >= webSent.length) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    await new Promise((r) => setTimeout(r, 500));
    entries = (await transcripts()).flat();

    const questions = entries.filter((e) => e.role === 'user');
    const repliesPer = questions.map((q) => entries.filter((e) => e.role === 'bot' && e.exchange === q.exchange).length);
    const botKinds = entries.filter((e) => e.role === 'bot').map((e) => e.kind);
    const discordCounts = discordSent.map(discordReplies);
    const healthText = await health();
    const metrics = await fetch(`http://127.0.0.1:${httpPort}/metrics`).then((r) => r.text());
    const places: [string, string][] = [
      ['gateway log', serve.output()],
      ['worker log', worker.output()],
      ['Discord posts', discord.requests.map((r) => JSON.stringify(r.body ?? r.json ?? '')).join('\n')],
      ['web chat pages', (await webPages(web)).join('\n')],
      ['/healthz', healthText],
      ['/metrics', metrics],
    ];
    const needles: [string, string][] = [
      ['Redis password', PASSWORD],
      ['Redis password (URL-encoded)', encodeURIComponent(PASSWORD)],
      ['FROMAGE_REDIS_URL', redis.url],
    ];
    const leaks = places.flatMap(([where, text]) => [
      ...needles.filter(([, v]) => text.includes(v)).map(([name]) => `${where}: ${name}`),
      ...leakedSecrets(text).map((name) => `${where}: ${name}`),
    ]);
    const logLines = (serve.output() + worker.output()).split('\n').length;
    // The error paths ran: the outage was logged (the connection's error, the reconnect).
    const outageLines = (serve.output() + worker.output()).split('\n').filter((l) => /ECONNREFUSED|connection is closed|reconnect|Redis.*(lost|unreachable|back)/i.test(l));
    printTable('secrets with Redis (gateway + worker processes)', [
      ['messages (web / Discord)', `${webSent.length + discordSent.length} (${webSent.length} / ${discordSent.length})`],
      ['replies: answers / errors / other', `${botKinds.filter((k) => k === 'answer').length + discordCounts.filter((n) => n > 0).length} / ${botKinds.filter((k) => k === 'error').length} / ${botKinds.filter((k) => k !== 'answer' && k !== 'error').length} (Discord replies counted as answers)`],
      ['messages without exactly one reply (must be 0)', repliesPer.filter((n) => n !== 1).length + discordCounts.filter((n) => n !== 1).length],
      ['Redis restarts under traffic', 1],
      ['lines scanned (gateway + worker logs)', `${logLines} (${outageLines.length} about the Redis outage)`],
      ['places scanned', places.map(([w]) => w).join(', ')],
      ['password, URL or token found (must be 0)', leaks.length],
    ]);
    expect(questions.length).toBe(webSent.length);
    expect(repliesPer.filter((n) => n !== 1)).toEqual([]);
    expect(discordCounts.filter((n) => n !== 1)).toEqual([]);
    // The gateway does show where Redis is, with the password masked.
    expect(healthText).toMatch(/redis:\/\/:\*\*\*@127\.0\.0\.1:\d+\/0/);
    expect(logLines).toBeGreaterThan(20);
    expect(leaks).toEqual([]);
    serve.kill('SIGTERM');
    worker.kill('SIGTERM');
    expect(await serve.exited).toBe(0);
    await worker.exited;
    // What they wrote while stopping is scanned too.
    const last = serve.output() + worker.output();
    expect(needles.filter(([, v]) => last.includes(v)).map(([n]) => n)).toEqual([]);
    expect(leakedSecrets(last)).toEqual([]);
  }, 300_000);
});
