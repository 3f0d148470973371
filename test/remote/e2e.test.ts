/**
 * The whole arrangement as real processes: a gateway (the real service with a scripted adapter,
 * test/remote/scripted-gateway.ts) and three `fromage worker`s on the fixture bundle, a real
 * redis-server. 200 messages from 20 users over 40 conversations while one worker is SIGKILLed:
 * each answered exactly once, each conversation's answers in order. And a gateway killed with
 * jobs queued in Redis, then restarted and sent the unanswered messages again (as a platform
 * redelivers them): none lost, none run twice.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KEYS } from '../../src/remote/keys.ts';
import { prepareFixtures, startProc, startWorkerProc, workerIdOf, type Fixtures, type Proc } from './cluster.ts';
import { freePort, startTestRedis, type TestRedis } from './redis-server.ts';

const USERS = 20;
const CONVERSATIONS = 40;
const MESSAGES = 200;

let work: string;
let f: Fixtures;
let redis: TestRedis;
let workers: Proc[] = [];
let events: Redis;
/** Request key -> times a worker started it (job ids are `<request key>-<attempt>`). */
const starts = new Map<string, number>();
/** Called with each job start a worker announces. */
let onStarted: (worker: string, job: string) => void = () => {};

interface Reply {
  id: string;
  kind?: string;
  text?: string;
  progress?: string;
}

function startGateway(name: string, replies: Reply[], env: Record<string, string> = {}): Proc {
  return startProc(
    ['test/remote/scripted-gateway.ts'],
    {
      FROMAGE_REDIS_URL: redis.url,
      FROMAGE_BUNDLE: f.bundle,
      FROMAGE_DATA_DIR: join(work, 'gateway-data'),
      FROMAGE_USER_RATE: '1000',
      FROMAGE_USER_BURST: '1000',
      FROMAGE_QUEUE_LIMIT: '1000',
      FROMAGE_WORKER_TIMEOUT_S: '2',
      FROMAGE_WORKER_WAIT_S: '30',
      FROMAGE_AFFINITY_WAIT_MS: '200',
      ...env,
    },
    (line) => {
      const r = JSON.parse(line) as Reply;
      if (r.kind) replies.push(r);
    },
  );
  void name;
}

const send = (g: Proc, m: { id: string; user: string; conversation: string; text: string }) => g.child.stdin!.write(`${JSON.stringify(m)}\n`);

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-remote-e2e-'));
  f = await prepareFixtures(work);
  redis = await startTestRedis({ password: 'e2e-redis-password' });
  workers = await Promise.all(['w1', 'w2', 'w3'].map((name) => startWorkerProc(f, work, redis.url, { name, batch: 2 })));
  events = new Redis(redis.url);
  await events.subscribe(KEYS.events);
  events.on('message', (_c: string, text: string) => {
    const e = JSON.parse(text) as { t: string; job: string; worker: string };
    if (e.t !== 'started') return;
    onStarted(e.worker, e.job);
    const key = e.job.replace(/-\d+$/, '');
    starts.set(key, (starts.get(key) ?? 0) + 1);
  });
}, 180_000);

afterAll(async () => {
  events?.disconnect();
  for (const w of workers) w.kill('SIGKILL');
  await Promise.all(workers.map((w) => w.exited));
  await redis?.destroy();
  await f?.images.close();
  await rm(work, { recursive: true, force: true });
});

async function waitUntil(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('gateway and workers as processes, end to end', () => {
  it('a gateway killed with jobs queued in Redis, restarted and asked again: none lost, none run twice', async () => {
    const messages = Array.from({ length: 12 }, (_, i) => ({ id: `r${i}`, user: `ru${i % 4}`, conversation: `rc${i % 6}`, text: `restart question ${i}` }));
    const first: Reply[] = [];
    const g1 = startGateway('g1', first);
    await g1.waitFor(/scripted gateway ready/);
    // Workers frozen: what g1 dispatches stays queued in Redis when g1 dies.
    for (const w of workers) process.kill(w.pid, 'SIGSTOP');
    starts.clear();
    for (const m of messages) send(g1, m);
    await new Promise((r) => setTimeout(r, 1500));
    g1.kill('SIGKILL');
    await g1.exited;
    for (const w of workers) process.kill(w.pid, 'SIGCONT');
    expect(first).toEqual([]);
    const second: Reply[] = [];
    const g2 = startGateway('g2', second);
    await g2.waitFor(/scripted gateway ready/);
    for (const m of messages) send(g2, m);
    await waitUntil(() => second.length >= messages.length, 60_000, 'answers from the restarted gateway');
    g2.kill('SIGTERM');
    await g2.exited;
    expect(second.map((r) => r.kind)).toEqual(messages.map(() => 'answer'));
    expect(new Set(second.map((r) => r.id)).size).toBe(messages.length);
    // Each message's job ran once: those queued under g1 were attached to, not run again.
    expect(starts.size).toBe(messages.length);
    expect([...starts.values()].every((n) => n === 1)).toBe(true);
  }, 120_000);

  it('`fromage serve` with FROMAGE_REDIS_URL and no bundle files is a gateway: /healthz lists the workers, /metrics their speed', async () => {
    const httpPort = await freePort();
    const serve = startProc(['src/cli.ts', 'serve'], {
      FROMAGE_REDIS_URL: redis.url,
      FROMAGE_BUNDLE: join(work, 'no-bundle-here'),
      FROMAGE_DATA_DIR: join(work, 'serve-data'),
      FROMAGE_WEB_PORT: String(await freePort()),
      HTTP_PORT: String(httpPort),
      FROMAGE_WORKER_WAIT_S: '20',
    });
    try {
      let health: { status: string; bundle?: string; remote?: { redis: { url: string }; workers: Record<string, unknown>[] } } = { status: 'starting' };
      const deadline = Date.now() + 60_000;
      while (health.status !== 'ready') {
        if (Date.now() > deadline || serve.child.exitCode !== null) throw new Error(`the gateway did not get ready:\n${serve.output().slice(-2000)}`);
        await new Promise((r) => setTimeout(r, 200));
        health = await fetch(`http://127.0.0.1:${httpPort}/healthz`).then((r) => r.json() as Promise<typeof health>, () => health);
      }
      expect(health.remote!.workers).toHaveLength(workers.length);
      for (const w of health.remote!.workers) {
        expect(w).toMatchObject({ device: 'cpu', state: 'idle', capacity: 2 });
        expect(typeof w.id).toBe('string');
        expect(Date.parse(String(w.lastSeen))).toBeGreaterThan(Date.now() - 10_000);
        expect(w.bundle).toBe(health.bundle);
      }
      expect(health.remote!.redis.url).toMatch(/^redis:\/\/:\*\*\*@127\.0\.0\.1:\d+\/0$/);
      const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
      expect(metrics).toMatch(/fromage_workers\{state="ready"\} 3/);
      expect(metrics).toMatch(/fromage_remote_queue_depth 0/);
      expect(JSON.stringify(health) + metrics + serve.output()).not.toContain('e2e-redis-password');
    } finally {
      serve.kill('SIGTERM');
      expect(await serve.exited).toBe(0);
    }
  }, 90_000);

  it(`${MESSAGES} messages from ${USERS} users over ${CONVERSATIONS} conversations, one worker SIGKILLed mid-run: each answered once, in order`, async () => {
    const replies: Reply[] = [];
    const httpPort = await freePort();
    const g = startGateway('main', replies, { HTTP_PORT: String(httpPort) });
    await g.waitFor(/scripted gateway ready/);
    const health = (await (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).json()) as { remote: { workers: { id: string; state: string }[] } };
    expect(health.remote.workers.length).toBe(3);
    const messages = Array.from({ length: MESSAGES }, (_, i) => {
      const conversation = i % CONVERSATIONS;
      return { id: `m${i}`, user: `u${conversation % USERS}`, conversation: `c${conversation}`, text: `message ${Math.floor(i / CONVERSATIONS)} in conversation ${conversation}` };
    });
    starts.clear();
    const t0 = Date.now();
    for (const m of messages) send(g, m);
    await waitUntil(() => replies.length >= 40, 60_000, 'the first answers');
    const victim = workers[1];
    const victimId = workerIdOf(victim);
    // The next job the victim starts is frozen at once and then killed: it dies mid-answer.
    let caught: string | undefined;
    onStarted = (worker, job) => {
      if (worker !== victimId || caught) return;
      caught = job;
      victim.kill('SIGSTOP');
      victim.kill('SIGKILL');
    };
    await victim.exited;
    onStarted = () => {};
    await waitUntil(() => replies.length >= MESSAGES, 80_000, `all ${MESSAGES} answers (have ${replies.length})`);
    const seconds = (Date.now() - t0) / 1000;
    await new Promise((r) => setTimeout(r, 500));
    const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    g.kill('SIGTERM');
    await g.exited;
    workers = workers.filter((w) => w !== victim);
    expect(replies.length).toBe(MESSAGES);
    expect(replies.filter((r) => r.kind !== 'answer')).toEqual([]);
    expect(new Set(replies.map((r) => r.id)).size).toBe(MESSAGES);
    for (let c = 0; c < CONVERSATIONS; c++) {
      const sent = messages.filter((m) => m.conversation === `c${c}`).map((m) => m.id);
      expect(replies.filter((r) => sent.includes(r.id)).map((r) => r.id)).toEqual(sent);
    }
    expect(g.output()).toMatch(/stopped announcing itself/);
    // The victim held jobs when it died (the gateway keeps every worker's slots filled): they ran again elsewhere.
    const rerun = g.logs().filter((l) => l.msg === 'running the job again on another worker').length;
    expect(rerun).toBeGreaterThan(0);
    // The caught job is almost always still running when the kill lands (it ran again elsewhere);
    // remote-engine.test.ts holds a job mid-answer deterministically, so this one is only reported.
    const caughtRanAgain = (starts.get(caught!.replace(/-\d+$/, '')) ?? 0) >= 2;
    expect(g.output()).not.toContain('e2e-redis-password');
    expect(metrics).toMatch(/fromage_remote_queue_depth \d+/);
    expect(metrics).toMatch(/fromage_worker_tokens_per_second\{worker="[^"]+",device="cpu"\} [\d.]+/);
    const twice = [...starts.values()].filter((n) => n > 1).length;
    console.log(`e2e: ${MESSAGES} answers in ${seconds.toFixed(1)} s; a worker SIGKILLed after 40 as it started a job (${caughtRanAgain ? 'which ran again elsewhere' : 'which it had finished'}): ${rerun} jobs re-queued, ${twice} started on two workers, each answered once`);
  }, 150_000);
});
