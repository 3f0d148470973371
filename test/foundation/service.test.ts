import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { SqliteHistoryStore } from '../../src/conversation/history.ts';
import type { Adapter, MessageHandler } from '../../src/conversation/types.ts';
import { Readiness, startHttp } from '../../src/service/http.ts';
import { createMetrics } from '../../src/service/metrics.ts';
import { startService } from '../../src/service/service.ts';
import { FakeEngine } from '../support/fake-engine.ts';
import { message, RecordingResponder } from '../support/messages.ts';

/** An adapter double that lets the test push messages in. */
function loopbackAdapter() {
  let handler: MessageHandler | undefined;
  let stopped = false;
  const adapter: Adapter = {
    platform: 'shell',
    async start(h) {
      handler = h;
    },
    async stop() {
      stopped = true;
    },
  };
  return {
    adapter,
    isStopped: () => stopped,
    async say(text: string) {
      const r = new RecordingResponder();
      await handler!(message(text), r);
      return r;
    },
    /** Starts a message without waiting for its answer. */
    send(text: string, user = 'u1', channel = 'c1') {
      const r = new RecordingResponder();
      const done = handler!(message(text, { user, channel }), r);
      return { r, done };
    },
  };
}

describe('service', () => {
  it('serves /healthz and /metrics with queue, wait, run, token and error figures', async () => {
    const config = loadConfig({ FROMAGE_DATA_DIR: '.tmp/unused' });
    const loop = loopbackAdapter();
    const engine = new FakeEngine();
    const service = await startService({
      config: { ...config, HTTP_PORT: 0 },
      logger: pino({ level: 'silent' }),
      engine,
      adapters: [loop.adapter],
      history: new SqliteHistoryStore(':memory:', { maxTurns: 10 }),
    });
    const address = service.http!.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    await loop.say('hello there');
    await loop.say('');
    const health = await fetch(`http://127.0.0.1:${port}/healthz`);
    expect(health.status).toBe(200);
    const body = (await health.json()) as { averageRunMs: number };
    expect(body).toMatchObject({ ok: true, status: 'ready', adapters: ['shell'], bundle: 'fake-bundle', queued: 0, running: 0, measuredRuns: 1 });
    // What was measured, not a starting guess of seconds averaged down slowly (issue 11, bug 9).
    expect(body.averageRunMs).toBeLessThan(1000);
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics).toMatch(/fromage_queue_depth 0/);
    expect(metrics).toMatch(/fromage_queue_wait_seconds_count 1/);
    expect(metrics).toMatch(/fromage_job_run_seconds_count\{outcome="ok"\} 1/);
    expect(metrics).toMatch(/fromage_generated_tokens_total \d+/);
    expect(metrics).toMatch(/fromage_messages_total\{platform="shell",intent="chat"\} 2/);
    expect((await fetch(`http://127.0.0.1:${port}/nope`)).status).toBe(404);
    await service.stop();
    expect(loop.isStopped()).toBe(true);
    expect(engine.closed).toBe(true);
  });

  it('opens HTTP_PORT before the platforms connect: /healthz says starting and what it waits for, then ready (issue 11, bug 5)', async () => {
    const config = loadConfig({ FROMAGE_DATA_DIR: '.tmp/unused' });
    let connect!: () => void;
    const connected = new Promise<void>((r) => (connect = r));
    const slowPlatform: Adapter = { platform: 'discord', start: () => connected, stop: async () => {} };
    // As `fromage serve` does: the port opens first, while the model is still loading.
    const metrics = createMetrics();
    const readiness = new Readiness();
    readiness.waitFor('the model to load');
    const http = await startHttp(0, metrics.registry, readiness, '127.0.0.1');
    const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/healthz`;
    const loading = await fetch(url);
    expect(loading.status).toBe(503);
    expect(await loading.json()).toEqual({ ok: false, status: 'starting', waitingFor: ['the model to load'] });
    readiness.done('the model to load');
    const starting = startService({
      config: { ...config, HTTP_PORT: 0 },
      logger: pino({ level: 'silent' }),
      engine: new FakeEngine(),
      adapters: [slowPlatform],
      history: new SqliteHistoryStore(':memory:', { maxTurns: 10 }),
      early: { http, metrics, readiness },
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(await (await fetch(url)).json()).toEqual({ ok: false, status: 'starting', waitingFor: ['discord to connect'] });
    connect();
    const service = await starting;
    const ready = await fetch(url);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ ok: true, status: 'ready', adapters: ['discord'], averageRunMs: null, measuredRuns: 0 });
    await service.stop();
  });

  it('on shutdown finishes the running answer, tells queued users, and closes the database', async () => {
    // One answer at a time, so the second message is still queued at shutdown.
    const config = loadConfig({ FROMAGE_DATA_DIR: '.tmp/unused', FROMAGE_BATCH: '1' });
    const loop = loopbackAdapter();
    const history = new SqliteHistoryStore(':memory:', { maxTurns: 10 });
    const service = await startService({ config, logger: pino({ level: 'silent' }), engine: new FakeEngine({ delayMs: 100 }), adapters: [loop.adapter], history });
    const running = loop.send('first', 'a', 'c1');
    const queued = loop.send('second', 'b', 'c2');
    await new Promise((r) => setTimeout(r, 20));
    await service.stop();
    await Promise.all([running.done, queued.done]);
    expect(running.r.text()).toMatch(/You said: first/);
    expect(queued.r.text()).toMatch(/restarting; your message was not answered/);
    expect(() => history.turns('x')).toThrow(/not open/);
  });

  it('documents every configuration variable in .env.example', async () => {
    const { configSchema } = await import('../../src/config.ts');
    const example = readFileSync('.env.example', 'utf8');
    for (const key of Object.keys(configSchema.shape)) expect(example, key).toMatch(new RegExp(`^${key}=`, 'm'));
  });
});
