/**
 * One real discord.js client (through `createDiscordAdapter`) connected to the fake Discord on
 * loopback, with a swappable handler double and the adapter's log lines captured.
 */
import { Writable } from 'node:stream';
import { createDiscordAdapter } from '../../adapters/discord/index.ts';
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/log.ts';
import type { Adapter, IncomingMessage, MessageHandler, Responder } from '../../src/conversation/types.ts';
import { FakeDiscord, type FakeDiscordOptions } from './fake-discord/server.ts';
import { APP_ID, guildFixture } from './fake-discord/payloads.ts';

export const GUILD = '1100000000000000001';
export const CHANNEL_IDS = Array.from({ length: 80 }, (_, i) => String(1100000000000000100n + BigInt(i)));
export const THREAD = '1100000000000000200';
export const THREAD_PARENT = CHANNEL_IDS[0];
export const BOT_ROLE = '1100000000000000300';
export const SETTINGS_ROLE = '1100000000000000301';

export interface Harness {
  readonly fake: FakeDiscord;
  readonly adapter: Adapter;
  readonly logLines: string[];
  /** Messages the handler double received, with their responders. */
  readonly received: { message: IncomingMessage; responder: Responder }[];
  setHandler(handler: MessageHandler): void;
  /** Resolves with the next message the handler receives. */
  nextMessage(timeoutMs?: number): Promise<IncomingMessage>;
  close(): Promise<void>;
}

/** The fake with one guild: channels, a thread under the first channel, the bot's role and a settings role. */
export function createFake(options: FakeDiscordOptions = {}): FakeDiscord {
  return new FakeDiscord({
    heartbeatIntervalMs: 500,
    ...options,
    guilds: [
      guildFixture({
        id: GUILD,
        channels: CHANNEL_IDS.map((id, i) => ({ id, name: `channel-${i}` })),
        threads: [{ id: THREAD, parentId: THREAD_PARENT, name: 'a thread' }],
        roles: [
          { id: BOT_ROLE, name: 'fromage', botId: '1200000000000000002' },
          { id: SETTINGS_ROLE, name: 'bot-tuners' },
        ],
      }),
    ],
  });
}

export function testConfig(fake: FakeDiscord, env: Record<string, string> = {}) {
  return loadConfig({
    DISCORD_TOKEN: 'fake-token-for-tests',
    DISCORD_APPLICATION_ID: APP_ID,
    DISCORD_API_BASE: fake.apiBase,
    FROMAGE_MAX_IMAGE_BYTES: String(64 * 1024),
    FROMAGE_MAX_IMAGES_PER_MESSAGE: '4',
    LOG_LEVEL: 'debug',
    ...env,
  });
}

export function captureLogs(): { lines: string[]; sink: Writable } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      lines.push(String(chunk));
      done();
    },
  });
  return { lines, sink };
}

export async function startHarness(env: Record<string, string> = {}): Promise<Harness> {
  const fake = createFake();
  await fake.start();
  const config = testConfig(fake, env);
  const { lines: logLines, sink } = captureLogs();
  const adapter = createDiscordAdapter(config, createLogger(config, sink), {
    timing: { progressIntervalMs: 1000, typingIntervalMs: 200 },
    downloadTimeoutMs: 2000,
  });
  const received: Harness['received'] = [];
  const waiters: ((m: IncomingMessage) => void)[] = [];
  let handler: MessageHandler = async () => undefined;
  await adapter.start(async (message, responder) => {
    received.push({ message, responder });
    waiters.shift()?.(message);
    await handler(message, responder);
  });
  return {
    fake,
    adapter,
    logLines,
    received,
    setHandler: (h) => {
      handler = h;
    },
    nextMessage: (timeoutMs = 5000) =>
      new Promise((resolve, reject) => {
        const waiter = (m: IncomingMessage) => {
          clearTimeout(timer);
          resolve(m);
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(waiter), 1);
          reject(new Error('no message reached the handler'));
        }, timeoutMs);
        waiters.push(waiter);
      }),
    close: async () => {
      await adapter.stop();
      await fake.close();
    },
  };
}
