/**
 * The remote engine against real `fromage worker` processes and a real redis-server: answers
 * as the in-process engine gives them, partial text streamed, affinity and its fallback, a
 * worker SIGKILLed mid-answer, a worker on another bundle, and a Redis outage.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_SETTINGS } from '../../src/conversation/types.ts';
import { openEngine } from '../../src/model/engine.ts';
import { EngineInputError, type PromptItem } from '../../src/model/engine-api.ts';
import { SchedulerRejection } from '../../src/queue/scheduler.ts';
import { PREFIX, workerQueue } from '../../src/remote/keys.ts';
import { parseRedisUrl } from '../../src/remote/redis-url.ts';
import { RemoteEngine } from '../../src/remote/remote-engine.ts';
import { prepareFixtures, startWorkerProc, workerIdOf, type Fixtures, type Proc } from './cluster.ts';
import { startTestRedis, type TestRedis } from './redis-server.ts';

/** How long Redis stays down in the outage test (the figure is 20 s; CI keeps it short). */
const OUTAGE_S = Number(process.env.FROMAGE_TEST_REDIS_OUTAGE_S ?? 3);
const PASSWORD = 'test-redis-Pa55word';

let work: string;
let f: Fixtures;
let redis: TestRedis;
let workers: Proc[] = [];
let engine: RemoteEngine;
const logLines: string[] = [];
const started: { worker: string; at: number }[] = [];

const settings = { ...DEFAULT_SETTINGS, maxWords: 8 };
const textPrompt = (t: string): PromptItem[] => [{ type: 'text', text: `Q: ${t}\nA:` }];

function openGateway(affinityWaitMs = 400): Promise<RemoteEngine> {
  return RemoteEngine.open({
    redis: parseRedisUrl(redis.url),
    logger: pino({ level: 'debug' }, { write: (l: string) => void logLines.push(l) }),
    bundleDir: f.bundle,
    affinityWaitMs,
    noWorkerWaitMs: 20_000,
    jobTimeoutMs: 60_000,
    workerTtlMs: 2000,
    startWaitMs: 20_000,
    onJobStarted: (_ms, worker) => started.push({ worker, at: Date.now() }),
  });
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-remote-'));
  f = await prepareFixtures(work, { otherBundle: true });
  redis = await startTestRedis({ password: PASSWORD });
  workers = await Promise.all(['a', 'b'].map((name) => startWorkerProc(f, work, redis.url, { name, batch: 2 })));
  engine = await openGateway();
}, 180_000);

afterAll(async () => {
  if (process.env.DEBUG_REMOTE) console.log(logLines.join(''), workers.map((w) => w.output()).join('\n'));
  await engine?.close();
  for (const w of workers) w.kill('SIGKILL');
  await Promise.all(workers.map((w) => w.exited));
  await redis?.destroy();
  await f?.images.close();
  await rm(work, { recursive: true, force: true });
});

describe('remote engine (gateway) with fromage worker processes', () => {
  it('answers as the in-process engine does, streaming partial text, and sizes capacity from the workers', async () => {
    expect(engine.capacity()).toBe(4);
    const local = await openEngine({ bundleDir: f.bundle, indexDirs: [], device: 'cpu', threads: 1, dataDir: join(work, 'local'), fetchAllow: [] });
    try {
      const prompt = textPrompt('what is a cheese?');
      const want = await local.chat(prompt, { ...settings, maxWords: 16 });
      const partial: string[] = [];
      const got = await engine.chat(prompt, { ...settings, maxWords: 16 }, { onText: (t) => partial.push(t) });
      expect(got.segments).toEqual(want.segments);
      expect(got.generatedTokens).toBe(want.generatedTokens);
      expect(await engine.countTokens('hello there')).toBe(await local.countTokens('hello there'));
      expect(engine.info.bundleId).toBe(local.info.bundleId);
      if (want.generatedTokens > 1) expect(partial.length).toBeGreaterThan(0);
    } finally {
      await local.close();
    }
  });

  it('tells the user when a conversation holds more image bytes than a job may carry', async () => {
    const big = Buffer.alloc(17 * 2 ** 20, 1);
    const prompt: PromptItem[] = [{ type: 'image', image: { hash: 'a'.repeat(64), data: big } }, ...textPrompt('and this?')];
    await expect(engine.chat(prompt, settings)).rejects.toThrow(EngineInputError);
    await expect(engine.chat(prompt, settings)).rejects.toThrow(/An image in this conversation is 17\.0 MiB, more than the 16 MiB a model worker accepts/);
  });

  it('returns retrieved images through Redis', async () => {
    const images = await engine.retrieve('a photo of a red circle', 2);
    expect(images.length).toBe(2);
    expect(images[0].contentType).toMatch(/^image\//);
    expect(images[0].data.length).toBeGreaterThan(50);
    expect(images[0].source).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/img\//);
  });

  it.runIf(process.platform === 'linux')('a worker runs every thread but its event loop at nice 10 (model compute, GC helpers, pools), also threads started after it began', async () => {
    const { readdir, readFile } = await import('node:fs/promises');
    const niceOf = async (pid: number) => {
      const out: Record<string, number> = {};
      for (const t of await readdir(`/proc/${pid}/task`)) {
        // Field 19 of /proc/PID/task/TID/stat; the name in parentheses may hold spaces.
        const stat = await readFile(`/proc/${pid}/task/${t}/stat`, 'utf8').catch(() => '');
        if (stat) out[t] = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
      }
      return out;
    };
    const w = workers[0];
    expect(w.logs().some((l) => l.msg === 'model compute and helper threads run at a lower priority than the event loop that takes jobs' && l.nice === 10)).toBe(true);
    // Jobs have run (threads such as libuv's pool start on first use); a heartbeat (400 ms here) catches late ones.
    let nice: Record<string, number> = {};
    for (let i = 0; i < 20; i++) {
      nice = await niceOf(w.pid);
      if (Object.entries(nice).every(([t, n]) => (t === String(w.pid) ? n === 0 : n === 10))) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(nice[String(w.pid)]).toBe(0);
    const others = Object.entries(nice).filter(([t]) => t !== String(w.pid));
    expect(others.length).toBeGreaterThan(3);
    expect(others.filter(([, n]) => n !== 10)).toEqual([]);
  });

  it('sends a conversation back to the worker that holds its cache, and to another after the affinity wait', async () => {
    const first = textPrompt('tell me about brie');
    started.length = 0;
    await engine.chat(first, settings);
    const home = started.at(-1)!.worker;
    const next: PromptItem[] = [...first, { type: 'text', text: ' soft\nQ: and camembert?\nA:' }];
    await engine.chat(next, settings);
    expect(started.at(-1)!.worker).toBe(home);
    // Two more turns opening like this conversation go home too; each stops at a [RET] whose image
    // fetch the test holds, so home is full. The next turn waits the affinity wait, then goes elsewhere.
    await clearImageCaches();
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    f.images.onRequest = () => held;
    const fetches = f.images.requests.length;
    const retSettings = { ...settings, retScaleFactor: 100, maxImages: 1 };
    const fillers = [1, 2].map((i) => engine.chat([...first, { type: 'text', text: ` filler ${i}\nQ: show me?\nA:` }], retSettings));
    await waitUntil(() => started.length >= 4 && f.images.requests.length >= fetches + 2);
    expect(started.slice(2).map((s) => s.worker)).toEqual([home, home]);
    const t0 = Date.now();
    const third: PromptItem[] = [...next, { type: 'text', text: ' ripe\nQ: and roquefort?\nA:' }];
    await engine.chat(third, settings);
    const elsewhere = started.at(-1)!;
    expect(elsewhere.worker).not.toBe(home);
    expect(elsewhere.at - t0).toBeGreaterThanOrEqual(350);
    release();
    f.images.onRequest = () => {};
    await Promise.all(fillers);
  });

  it('runs a job again on another worker when its worker is SIGKILLed mid-answer; one answer', async () => {
    await clearImageCaches();
    started.length = 0;
    let first = true;
    let killed: Proc | undefined;
    f.images.onRequest = async () => {
      if (!first) return;
      first = false;
      // The worker is fetching the images it retrieved: mid-answer.
      const w = started[0]!.worker;
      killed = workers.find((p) => workerIdOf(p) === w)!;
      killed.kill('SIGKILL');
      await new Promise((r) => setTimeout(r, 200));
    };
    const answers: unknown[] = [];
    const images = await engine.retrieve('a kitten asleep on a sofa', 2).then((r) => (answers.push(r), r));
    f.images.onRequest = () => {};
    expect(killed).toBeDefined();
    expect(images.length).toBe(2);
    expect(answers.length).toBe(1);
    expect(new Set(started.map((s) => s.worker)).size).toBe(2);
    expect(logLines.join('')).toMatch(/stopped announcing itself/);
    // A fresh worker takes its place for the later tests.
    workers = workers.filter((w) => w !== killed);
    workers.push(await startWorkerProc(f, work, redis.url, { name: 'c', batch: 2 }));
    await waitUntil(() => engine.capacity() === 4);
  }, 60_000);

  it('a worker on another bundle refuses jobs with a logged reason, and the gateway routes none to it', async () => {
    const other = await startWorkerProc(f, work, redis.url, { name: 'other', bundle: f.otherBundle, batch: 1 });
    workers.push(other);
    const id = workerIdOf(other);
    await waitUntil(() => (engine.health().workers as { id: string; state: string }[]).some((w) => w.id === id && w.state === 'refusing'));
    expect(other.output()).toMatch(/refusing jobs: this worker serves bundle \S+ but the gateway expects/);
    expect(engine.capacity()).toBe(4);
    // A job that reaches it anyway (an older gateway, a hand-made one) fails with the reason.
    const c = new Redis(parseRedisUrl(redis.url).options);
    const q = new Queue(workerQueue(id), { connection: c, prefix: PREFIX });
    const job = await q.add('chat', { v: 1, bundleId: engine.info.bundleId, deadline: Date.now() + 60_000, kind: 'retrieve', query: 'x', count: 1 });
    await waitUntil(async () => Boolean((await q.getJob(job.id!))?.finishedOn));
    expect((await q.getJob(job.id!))!.failedReason).toMatch(/^bundle: this worker serves bundle/);
    await q.close();
    // A malformed job (anyone who reaches Redis can write one) is refused, and the worker carries on.
    const ready = workers.find((w) => w !== other)!;
    const q2 = new Queue(workerQueue(workerIdOf(ready)), { connection: c, prefix: PREFIX });
    const bad = await q2.add('chat', { v: 1, bundleId: engine.info.bundleId, deadline: Date.now() + 60_000, kind: 'chat', prompt: [{ type: 'image', hash: 'x', data: '%%%' }], settings: {} });
    await waitUntil(async () => Boolean((await q2.getJob(bad.id!))?.finishedOn));
    expect((await q2.getJob(bad.id!))!.failedReason).toMatch(/^invalid: the job does not match protocol 1/);
    expect(ready.output()).toMatch(/refusing an invalid job/);
    await q2.close();
    c.disconnect();
    other.kill('SIGTERM');
    await other.exited;
    workers = workers.filter((w) => w !== other);
  }, 60_000);

  it('a worker stopped with SIGTERM finishes its running answer first; nothing runs twice', async () => {
    await clearImageCaches();
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    f.images.onRequest = () => held;
    started.length = 0;
    const fetches = f.images.requests.length;
    const answer = engine.retrieve('a lighthouse at dusk', 1);
    await waitUntil(() => started.length === 1 && f.images.requests.length > fetches);
    const stopping = workers.find((p) => workerIdOf(p) === started[0].worker)!;
    stopping.kill('SIGTERM');
    await waitUntil(() => (engine.health().workers as { id: string; state: string }[]).some((w) => w.id === started[0].worker && w.state === 'stopping'));
    release();
    f.images.onRequest = () => {};
    expect((await answer).length).toBe(1);
    expect(await stopping.exited).toBe(0);
    expect(started.length).toBe(1);
    workers = workers.filter((w) => w !== stopping);
    workers.push(await startWorkerProc(f, work, redis.url, { name: 'd', batch: 2 }));
    await waitUntil(() => engine.capacity() === 4);
  }, 60_000);

  it('keeps the Redis password out of logs and /healthz', () => {
    expect(JSON.stringify(engine.health())).not.toContain(PASSWORD);
    expect(JSON.stringify(engine.health())).toContain(':***@127.0.0.1');
    expect(logLines.join('')).not.toContain(PASSWORD);
    for (const w of workers) expect(w.output()).not.toContain(PASSWORD);
  });

  it(`rides out Redis stopped for ${OUTAGE_S} s: busy meanwhile, every accepted job answered once`, async () => {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    f.images.onRequest = () => held;
    await clearImageCaches();
    started.length = 0;
    const fetchesBefore = f.images.requests.length;
    const outcomes = new Map<number, number>();
    const accepted = [0, 1, 2].map((i) => engine.retrieve(`query ${i}`, 1).then(() => outcomes.set(i, (outcomes.get(i) ?? 0) + 1)));
    await waitUntil(() => started.length >= 3 && f.images.requests.length >= fetchesBefore + 3);
    // All three are mid-answer (their image fetches held) when Redis goes away.
    await redis.stop();
    await waitUntil(() => !(engine.health().redis as { connected: boolean }).connected);
    await expect(engine.chat(textPrompt('hello?'), settings)).rejects.toSatisfy((e) => e instanceof SchedulerRejection && e.reason === 'busy');
    await new Promise((r) => setTimeout(r, OUTAGE_S * 1000));
    await redis.start();
    release();
    await Promise.all(accepted);
    f.images.onRequest = () => {};
    expect([...outcomes.values()]).toEqual([1, 1, 1]);
    // Workers reconnected by themselves and take new jobs.
    await waitUntil(() => engine.capacity() === 4, 15_000);
    const after = await engine.chat(textPrompt('still there?'), settings);
    expect(after.segments.length).toBeGreaterThanOrEqual(0);
    expect(logLines.join('')).toMatch(/Redis is back/);
  }, 90_000);
});

/** Workers keep fetched images on disk; a test that holds fetches needs them fetched again. */
async function clearImageCaches(): Promise<void> {
  const { readdir } = await import('node:fs/promises');
  for (const d of await readdir(work)) if (d.startsWith('data-')) await rm(join(work, d, 'image-cache'), { recursive: true, force: true });
}

async function waitUntil(cond: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

