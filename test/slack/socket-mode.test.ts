import { createServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/log.ts';
import { createSlackAdapter } from '../../adapters/slack/index.ts';
import type { IncomingMessage } from '../../src/conversation/types.ts';
import { APP_TOKEN, BOT_TOKEN, FakeSlack } from './fake-slack.ts';
import { eventEnvelope, eventually, handlerDouble, startSocketAdapter } from './harness.ts';

const fake = new FakeSlack();
beforeAll(() => fake.start());
afterAll(() => fake.stop());

it('Socket Mode: opens the connection with the app token, acks an events_api envelope and answers in the thread', async () => {
  const received: IncomingMessage[] = [];
  const adapter = await startSocketAdapter(fake, handlerDouble(received, []));
  try {
    const open = fake.callsTo('apps.connections.open');
    expect(open).toHaveLength(1);
    expect(open[0].authorization).toBe(`Bearer ${APP_TOKEN}`);

    const event = { type: 'app_mention', user: 'U1', text: '<@UBOT> hi', ts: '20.0001', channel: 'C5', team: 'T1' };
    const envelope = eventEnvelope(event, 'Ev-socket');
    expect(fake.deliverOverSocket('env-1', envelope)).toBe(1);
    await eventually(() => received.length === 1 && fake.socketAcks.includes('env-1'));
    await adapter.idle();

    expect(received[0].key).toEqual({ platform: 'slack', workspace: 'T1', channel: 'C5', thread: '20.0001' });
    expect(fake.thread('C5', '20.0001').map((m) => m.text ?? m.files)).toEqual(['I see &lt;a cat&gt; &amp; a dog', ['first.png', 'second.png'], 'Anything else?']);

    // Slack redelivers over the socket too (retry_attempt); the same event_id is answered once.
    fake.deliverOverSocket('env-2', envelope, 1);
    await eventually(() => fake.socketAcks.includes('env-2'));
    await adapter.idle();
    expect(received).toHaveLength(1);
  } finally {
    await adapter.stop();
  }
});

it('refuses to start with a token Slack rejects, naming the variable and the fix', async () => {
  const config = loadConfig({ SLACK_BOT_TOKEN: 'xoxb-revoked-token', SLACK_APP_TOKEN: APP_TOKEN, SLACK_API_URL: fake.apiUrl });
  const adapter = createSlackAdapter(config, createLogger({ LOG_LEVEL: 'silent' }), { clientOptions: { retryConfig: { retries: 0 } } });
  await expect(adapter.start(async () => undefined)).rejects.toThrow(/Slack rejected SLACK_BOT_TOKEN \(invalid_auth\): copy the Bot User OAuth Token/);
});

it('refuses to start when Slack rejects the app token', async () => {
  const config = loadConfig({ SLACK_BOT_TOKEN: BOT_TOKEN, SLACK_APP_TOKEN: 'xapp-1-revoked-token', SLACK_API_URL: fake.apiUrl });
  const adapter = createSlackAdapter(config, createLogger({ LOG_LEVEL: 'silent' }), { clientOptions: { retryConfig: { retries: 0 } } });
  await expect(adapter.start(async () => undefined)).rejects.toThrow(/Socket Mode could not connect \(.*\): check SLACK_APP_TOKEN/);
  await adapter.stop();
});

describe('Slack unreachable (issue 11, bug 4)', () => {
  const silent = () => createLogger({ LOG_LEVEL: 'silent' });

  it('fails within the deadline when nothing listens at SLACK_API_URL, naming the host and the variable', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const { port } = closed.address() as AddressInfo;
    await new Promise<void>((r) => closed.close(() => r()));
    const config = loadConfig({ SLACK_BOT_TOKEN: BOT_TOKEN, SLACK_APP_TOKEN: APP_TOKEN, SLACK_API_URL: `http://127.0.0.1:${port}/api/` });
    const warnings: string[] = [];
    const logger = { ...silent(), warn: (m: unknown) => void warnings.push(String(m)), child: () => logger } as unknown as ReturnType<typeof silent>;
    const adapter = createSlackAdapter(config, logger, { startTimeoutMs: 2500 });
    const started = Date.now();
    await expect(adapter.start(async () => undefined)).rejects.toThrow(
      new RegExp(`Could not reach Slack at 127\\.0\\.0\\.1:${port} after \\d attempts \\(.*ECONNREFUSED.*\\): check the network .*SLACK_API_URL`),
    );
    expect(Date.now() - started).toBeLessThan(6000);
    // The waiting was visible, with its backoff.
    expect(warnings.join('\n')).toMatch(/cannot reach 127\.0\.0\.1:\d+ .*trying again in 1 s/);
  });

  it('fails within the deadline when Slack accepts connections but never answers', async () => {
    const sockets = new Set<Socket>();
    const blackHole = createNetServer((s) => void sockets.add(s));
    await new Promise<void>((r) => blackHole.listen(0, '127.0.0.1', r));
    const { port } = blackHole.address() as AddressInfo;
    try {
      const config = loadConfig({ SLACK_BOT_TOKEN: BOT_TOKEN, SLACK_APP_TOKEN: APP_TOKEN, SLACK_API_URL: `http://127.0.0.1:${port}/api/` });
      const adapter = createSlackAdapter(config, silent(), { startTimeoutMs: 1500 });
      const started = Date.now();
      await expect(adapter.start(async () => undefined)).rejects.toThrow(/Could not reach Slack at 127\.0\.0\.1:\d+ after 1 attempt .*SLACK_API_URL/);
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      for (const s of sockets) s.destroy();
      blackHole.close();
    }
  }, 15_000);

  it('gives Socket Mode a deadline when the WebSocket server cannot be reached', async () => {
    const config = loadConfig({ SLACK_BOT_TOKEN: BOT_TOKEN, SLACK_APP_TOKEN: APP_TOKEN, SLACK_API_URL: fake.apiUrl });
    fake.socketUrlOverride = 'ws://127.0.0.1:9/unreachable';
    try {
      const adapter = createSlackAdapter(config, silent(), { startTimeoutMs: 1500 });
      await expect(adapter.start(async () => undefined)).rejects.toThrow(/Socket Mode did not connect to Slack within \d+ s .*SLACK_APP_TOKEN/);
    } finally {
      fake.socketUrlOverride = undefined;
    }
  }, 15_000);
});
