/**
 * Setup paths against the fake Discord: allow-lists, login failures a self-hoster can cause,
 * and the `fromage discord invite|register` commands.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test, vi } from 'vitest';
import { Command } from 'commander';
import { createDiscordAdapter } from '../../adapters/discord/index.ts';
import { registerDiscordCommands } from '../../adapters/discord/commands.ts';
import { createLogger } from '../../src/log.ts';
import type { RecordedRequest } from './fake-discord/server.ts';
import { ALICE, APP_ID, BOT_USER, interactionPayload, messagePayload } from './fake-discord/payloads.ts';
import { CHANNEL_IDS, GUILD, SETTINGS_ROLE, THREAD, captureLogs, createFake, startHarness, testConfig, type Harness } from './harness.ts';
import { loadConfig } from '../../src/config.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('allow-lists', () => {
  let h: Harness;
  const allowed = CHANNEL_IDS[0];
  const other = CHANNEL_IDS[1];

  beforeAll(async () => {
    h = await startHarness({ DISCORD_CHANNEL_ALLOW: allowed, DISCORD_ROLE_ALLOW: SETTINGS_ROLE, DISCORD_DMS: 'false' });
    h.setHandler(async (m, r) => r.send({ kind: 'answer', segments: [{ type: 'text', text: `ok ${m.text}` }] }));
  });
  afterAll(async () => {
    await h?.close();
  });

  const say = (channelId: string, text: string, roles: string[], guild = true) =>
    h.fake.dispatch(
      'MESSAGE_CREATE',
      messagePayload({
        channelId,
        ...(guild ? { guildId: GUILD, roles } : {}),
        channelType: channelId === THREAD ? 11 : undefined,
        author: ALICE,
        content: `<@${BOT_USER.id}> ${text}`,
        mentions: [BOT_USER],
      }),
    );

  test('only allowed channels (and their threads), members with an allowed role, and no DMs', async () => {
    say(other, 'wrong channel', [SETTINGS_ROLE]);
    say(allowed, 'no role', []);
    say('1100000000000000950', 'a DM', [], false);
    say(allowed, 'right place', [SETTINGS_ROLE]);
    say(THREAD, 'thread of an allowed channel', [SETTINGS_ROLE]);
    const deadline = Date.now() + 5000;
    while (h.received.length < 2 && Date.now() < deadline) await sleep(20);
    await sleep(150);
    expect(h.received.map((r) => r.message.text)).toEqual(['right place', 'thread of an allowed channel']);
  });

  test('a command outside the allow-lists is refused privately', async () => {
    const payload = interactionPayload({ guildId: GUILD, channel: { id: other, type: 0 }, user: ALICE, roles: [SETTINGS_ROLE], subcommand: 'help' });
    h.fake.dispatch('INTERACTION_CREATE', payload);
    const cb = await h.fake.waitForRequest((r) => r.path.startsWith(`/interactions/${payload.id}/`));
    expect(cb.body).toMatchObject({ type: 4, data: { flags: 64 } });
    expect(String((cb.body?.data as { content: string }).content)).toMatch(/not enabled here/);
  });
});

describe('login failures', () => {
  test('a wrong token names DISCORD_TOKEN and the fix', async () => {
    const fake = createFake({ acceptedToken: 'the-real-token' });
    await fake.start();
    try {
      const config = testConfig(fake, { DISCORD_TOKEN: 'a-wrong-token' });
      const adapter = createDiscordAdapter(config, createLogger(config, captureLogs().sink), { readyTimeoutMs: 5000 });
      await expect(adapter.start(async () => undefined)).rejects.toThrow(/Discord rejected DISCORD_TOKEN: reset the bot token/);
    } finally {
      await fake.close();
    }
  });

  test('without the Message Content intent (close 4014) it warns and runs on mentions and DMs', async () => {
    const fake = createFake({ disallowedIntents: 1 << 15 });
    await fake.start();
    const logs = captureLogs();
    const config = testConfig(fake);
    const adapter = createDiscordAdapter(config, createLogger(config, logs.sink), { readyTimeoutMs: 5000 });
    try {
      const received: string[] = [];
      await adapter.start(async (m) => void received.push(m.text));
      expect(fake.connections.map((c) => Number(c.identify?.intents) & (1 << 15))).toEqual([1 << 15, 0]);
      expect(logs.lines.some((l) => l.includes('Message Content intent is not enabled'))).toBe(true);
      fake.dispatch(
        'MESSAGE_CREATE',
        messagePayload({ channelId: CHANNEL_IDS[2], guildId: GUILD, author: ALICE, content: `<@${BOT_USER.id}> still works`, mentions: [BOT_USER] }),
      );
      const deadline = Date.now() + 3000;
      while (received.length === 0 && Date.now() < deadline) await sleep(20);
      expect(received).toEqual(['still works']);
    } finally {
      await adapter.stop();
      await fake.close();
    }
  });

  test('DISCORD_API_BASE written with the version and a slash still connects', async () => {
    const fake = createFake();
    await fake.start();
    const config = testConfig(fake, { DISCORD_API_BASE: `${fake.apiBase}/v10/` });
    const adapter = createDiscordAdapter(config, createLogger(config, captureLogs().sink), { readyTimeoutMs: 5000 });
    try {
      await adapter.start(async () => undefined);
      expect(fake.connections[0].query.get('v')).toBe('10');
    } finally {
      await adapter.stop();
      await fake.close();
    }
  });

  test('no token is a configuration error, not a crash later', () => {
    const config = { ...testConfig(createFake()), DISCORD_TOKEN: undefined };
    expect(() => createDiscordAdapter(config, createLogger(config, captureLogs().sink))).toThrow(/DISCORD_TOKEN is not set/);
  });
});

describe('fromage discord', () => {
  const saved = { ...process.env };
  afterEach(() => {
    process.env = { ...saved };
    vi.restoreAllMocks();
  });

  async function run(args: string[]): Promise<string> {
    const out: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      out.push(String(chunk));
      return true;
    });
    const program = new Command('fromage').exitOverride();
    registerDiscordCommands(program, async () => loadConfig(process.env));
    await program.parseAsync(['node', 'fromage', ...args]);
    return out.join('');
  }

  test('invite prints the authorize URL with the bot and applications.commands scopes and the needed permissions', async () => {
    process.env.DISCORD_APPLICATION_ID = APP_ID;
    delete process.env.DISCORD_API_BASE;
    const url = new URL((await run(['discord', 'invite'])).trim());
    expect(url.origin + url.pathname).toBe('https://discord.com/oauth2/authorize');
    expect(url.searchParams.get('client_id')).toBe(APP_ID);
    expect(url.searchParams.get('scope')).toBe('bot applications.commands');
    // View Channel, Send Messages, Send Messages in Threads, Attach Files, Read Message History
    const perms = BigInt(url.searchParams.get('permissions') ?? '0');
    expect(perms).toBe((1n << 10n) | (1n << 11n) | (1n << 38n) | (1n << 15n) | (1n << 16n));
  });

  test('invite without an application id explains where to find it', async () => {
    delete process.env.DISCORD_APPLICATION_ID;
    delete process.env.DISCORD_TOKEN;
    await expect(run(['discord', 'invite'])).rejects.toThrow(/DISCORD_APPLICATION_ID is not set/);
  });

  test('register --guild puts /fromage with its five subcommands into that guild', async () => {
    const fake = createFake({ acceptedToken: 'register-token' });
    await fake.start();
    try {
      Object.assign(process.env, { DISCORD_TOKEN: 'register-token', DISCORD_APPLICATION_ID: APP_ID, DISCORD_API_BASE: fake.apiBase });
      const out = await run(['discord', 'register', '--guild', GUILD]);
      expect(out).toMatch(`Registered /fromage in server ${GUILD}`);
      const put = await fake.waitForRequest((r: RecordedRequest) => r.method === 'PUT');
      expect(put.path).toBe(`/applications/${APP_ID}/guilds/${GUILD}/commands`);
      const [cmd] = put.json as { name: string; options: { name: string; options?: { name: string; type: number; required?: boolean }[] }[] }[];
      expect(cmd.name).toBe('fromage');
      expect(cmd.options.map((o) => o.name)).toEqual(['retrieve', 'ask', 'reset', 'settings', 'help']);
      const ask = cmd.options.find((o) => o.name === 'ask');
      expect(ask?.options?.map((o) => [o.name, o.type, o.required])).toEqual([
        ['prompt', 3, true],
        ['image', 11, false],
      ]);
      const settings = cmd.options.find((o) => o.name === 'settings');
      expect(settings?.options?.map((o) => o.name)).toEqual(['ret_scale', 'max_images', 'words', 'temperature', 'reset']);

      await run(['discord', 'register']);
      await fake.waitForRequest((r: RecordedRequest) => r.method === 'PUT' && r.path === `/applications/${APP_ID}/commands`);

      process.env.DISCORD_TOKEN = 'not-the-token';
      await expect(run(['discord', 'register'])).rejects.toThrow(/Discord refused the command registration: .*Check DISCORD_TOKEN/);
    } finally {
      await fake.close();
    }
  });
});
