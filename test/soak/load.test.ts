/**
 * Load, and model worker crashes under load: many users over many conversations on Discord,
 * Slack and the web chat (its HTTP API, as the page sends), in bursts, through the real
 * adapters, service and fixture engine. Promises (README,
 * "Reliability"): every accepted message gets exactly one answer; every refused one exactly one
 * refusal saying when to retry; nothing is lost or answered twice; each conversation is
 * answered in arrival order; a user waiting behind others' bursts sees at most a bounded number
 * of any one other user's jobs start first (round-robin); memory after the run stays within a
 * stated bound. The web chat's pages see the same: each question in a conversation's transcript
 * and on its event stream has exactly one reply, in the order the questions arrived. With the worker killed at random moments, the jobs in flight get one clear
 * failure reply each and serving resumes by itself.
 */
import { BroadcastChannel } from 'node:worker_threads';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { conversationId } from '../../src/conversation/key.ts';
import { FromageEngine } from '../../src/model/engine.ts';
import { fixtureBundle, ObservedEngine, percentile, secretLeaks, startSoakBot, until, type Seen, type SoakBot } from './harness.ts';
import { mentionProblems } from './mentions.ts';
import { printTable, randomFrom, SEED, SIZES } from './sizes.ts';
import { deliver, FIXTURE_PNG, makePlaces, watchPage, webConversation, type PageWatch, type Place } from './traffic.ts';

const BATCH = 4;
/** Kept KV caches are memory the engine holds on purpose, up to this budget. */
const KV_CACHE_MB = 32;
/** Memory after the run may exceed memory before it by at most this much (fixture model, short and full; KV budget included). */
const RSS_GROWTH_BOUND_MB = 200;

let work: string;
let bundle: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-soak-load-'));
  bundle = await fixtureBundle(work);
}, 60_000);

afterAll(() => rm(work, { recursive: true, force: true }));

const tagOf = (text: string) => /\bmsg(\d+)\b/.exec(text)?.[1];

interface RunFigures {
  sent: number;
  /** Slack events delivered twice (a retry with the same event_id). */
  redelivered: number;
  seen: Seen[];
  peakRssMb: number;
  rssBeforeMb: number;
  rssAfterMb: number;
  wallS: number;
  /** What the web chat's pages saw. */
  web: PageFigures;
}

/** The web chat, counted on what a page gets: the saved transcript and the live event stream. */
interface PageFigures {
  /** Messages sent through the web chat's API (each answered 202). */
  sent: number;
  answers: number;
  refusals: number;
  refusalsWithoutRetryTime: number;
  failures: number;
  /** A question with more than one reply in the transcript, or more than one reply or `done` event on the stream. */
  duplicates: number;
  /** A sent message with no question in the transcript, a question without a reply, or a reply or `done` that never reached the stream. */
  lost: number;
  /** Replies saved or streamed out of the questions' order. */
  outOfOrder: number;
  /** Event frames that were not JSON (a broken stream). */
  brokenFrames: number;
}

interface PageEntry {
  id: number;
  exchange: number;
  role: 'user' | 'bot';
  kind: string;
  segments: { type: string; text?: string }[];
}

const entryText = (e: PageEntry) => e.segments.map((s) => s.text ?? '').join(' ');

async function transcript(bot: SoakBot, id: string): Promise<PageEntry[]> {
  const res = await fetch(`${bot.web.url}api/conversations/${id}`);
  if (res.status !== 200 || !/^application\/json/.test(res.headers.get('content-type') ?? '')) throw new Error(`the web chat's transcript of ${id}: ${res.status} ${res.headers.get('content-type')}`);
  return ((await res.json()) as { entries: PageEntry[] }).entries;
}

/** Counts the web chat's promises on each conversation's transcript and event stream. */
async function pageFigures(bot: SoakBot, watches: Map<string, { watch: PageWatch; after: number }>, sentTags: Set<string>): Promise<PageFigures> {
  const f: PageFigures = { sent: sentTags.size, answers: 0, refusals: 0, refusalsWithoutRetryTime: 0, failures: 0, duplicates: 0, lost: 0, outOfOrder: 0, brokenFrames: 0 };
  const questions = new Set<string>();
  for (const [id, { watch, after }] of watches) {
    // Only this run's entries (a warm-up may have written earlier ones with the same tags).
    const entries = (await transcript(bot, id)).filter((e) => e.id > after);
    const streamed = watch.events.filter((e) => e.event === 'entry').map((e) => e.data as PageEntry);
    const done = watch.events.filter((e) => e.event === 'done').map((e) => (e.data as { exchange: number }).exchange);
    f.brokenFrames += watch.events.filter((e) => e.raw !== undefined).length;
    for (const q of entries.filter((e) => e.role === 'user')) {
      const tag = tagOf(entryText(q));
      if (tag === undefined || !sentTags.has(tag)) continue;
      if (questions.has(tag)) f.duplicates++;
      questions.add(tag);
      const saved = entries.filter((e) => e.role === 'bot' && e.exchange === q.exchange);
      const live = streamed.filter((e) => e.role === 'bot' && e.exchange === q.exchange);
      const ends = done.filter((x) => x === q.exchange).length;
      if (saved.length === 0 || live.length === 0 || ends === 0) f.lost++;
      f.duplicates += Math.max(0, saved.length - 1) + Math.max(0, live.length - 1) + Math.max(0, ends - 1);
      const reply = saved[0];
      if (reply?.kind === 'answer') f.answers++;
      else if (reply?.kind === 'busy') {
        f.refusals++;
        if (!/try again in ~?\d+ s/.test(entryText(reply))) f.refusalsWithoutRetryTime++;
      } else if (reply?.kind === 'error') f.failures++;
    }
    // Questions take their exchange number as they arrive; their replies are saved and streamed in that order.
    for (const list of [entries.filter((e) => e.role === 'bot'), streamed.filter((e) => e.role === 'bot')])
      for (let i = 1; i < list.length; i++) if (list[i].exchange < list[i - 1].exchange) f.outOfOrder++;
  }
  for (const tag of sentTags) if (!questions.has(tag)) f.lost++;
  return f;
}

/** Sends `SIZES.messages` tagged messages in bursts; returns when every one was handled (or the deadline passed). */
async function runTraffic(bot: SoakBot, seed: number, during?: (sentSoFar: number) => void, total = SIZES.messages): Promise<RunFigures> {
  const random = randomFrom(seed);
  const places = makePlaces(SIZES.conversations);
  const ownerOf = new Map(places.flatMap((p, i) => (p.owner !== undefined ? [[p.owner, i] as const] : [])));
  const dmOwners = ownerOf.size;
  const shared = places.flatMap((p, i) => (p.owner === undefined ? [i] : []));
  // Users 0..dmOwners-1 talk in their DM; the rest in shared channels and threads.
  const pick = (): { place: Place; user: number } => {
    const user = Math.floor(random() * SIZES.users);
    if (user < dmOwners && random() < 0.7) return { place: places[ownerOf.get(user)!], user };
    return { place: places[shared[Math.floor(random() * shared.length)]], user };
  };
  // Each web conversation is open in a page, listening to its event stream, before the traffic starts.
  const watches = new Map<string, { watch: PageWatch; after: number }>();
  for (const place of places)
    if (place.platform === 'web') {
      const id = await webConversation(bot, place);
      if (!watches.has(id)) watches.set(id, { watch: watchPage(`${bot.web.url}api/conversations/${id}/events`), after: Math.max(0, ...(await transcript(bot, id)).map((e) => e.id)) });
    }
  await Promise.all([...watches.values()].map((w) => w.watch.ready));
  const doneEvents = () => [...watches.values()].reduce((n, w) => n + w.watch.events.filter((e) => e.event === 'done').length, 0);
  const webTags = new Set<string>();
  const rssBefore = process.memoryUsage().rss;
  let peak = rssBefore;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 50);
  const started = performance.now();
  let sent = 0;
  let redelivered = 0;
  const sentTo = new Map<string, string>();
  const first = bot.seen.length;
  try {
    while (sent < total) {
      // A burst: a few users, each sending one to four messages at once; now and then one user floods.
      const flood = random() < 0.1;
      const burst: Promise<void>[] = [];
      const senders = flood ? 1 : 1 + Math.floor(random() * 6);
      for (let s = 0; s < senders && sent < total; s++) {
        const { place, user } = pick();
        const n = flood ? 12 : 1 + Math.floor(random() * 4);
        for (let k = 0; k < n && sent < total; k++) {
          const tag = sent++;
          const image = random() < 0.1 ? { name: `photo${tag}.png`, data: FIXTURE_PNG, contentType: 'image/png' } : undefined;
          // Slack redelivers some events (at-least-once): they must still be answered once.
          const redeliver = place.platform === 'slack' && random() < 0.1;
          if (redeliver) redelivered++;
          sentTo.set(String(tag), `${place.platform} ${place.kind}`);
          if (place.platform === 'web') webTags.add(String(tag));
          burst.push(deliver(bot, place, user, `msg${tag} what is this?`, image, redeliver));
        }
      }
      await Promise.all(burst);
      during?.(sent);
      await new Promise((r) => setTimeout(r, Math.floor(random() * 150)));
    }
    await until(
      () => bot.seen.length - first >= sent && bot.seen.slice(first).every((s) => s.finished),
      120_000,
      () => {
        const arrived = new Set(bot.seen.slice(first).map((s) => tagOf(s.message.text)));
        const missing = [...sentTo.entries()].filter(([tag]) => !arrived.has(tag)).map(([tag, where]) => `msg${tag} (${where})`);
        return `${bot.seen.length - first} of ${sent} messages reached the service; ${bot.seen.slice(first).filter((s) => !s.finished).length} unfinished; missing: ${missing.slice(0, 20).join(', ')}`;
      },
    );
    // The adapters' last platform calls (a status message turned into the answer) settle.
    await new Promise((r) => setTimeout(r, 300));
    // Every web question's `done` reached its page.
    const webSeen = bot.seen.slice(first).filter((s) => s.message.key.platform === 'web').length;
    // (If one never does, pageFigures counts it lost.)
    await until(() => doneEvents() >= webSeen, 30_000, () => `the web pages got ${doneEvents()} done events for ${webSeen} questions`).catch(() => undefined);
  } finally {
    clearInterval(sampler);
  }
  const web = await pageFigures(bot, watches, webTags);
  for (const w of watches.values()) w.watch.close();
  return {
    sent,
    redelivered,
    seen: bot.seen.slice(first),
    peakRssMb: peak / 2 ** 20,
    rssBeforeMb: rssBefore / 2 ** 20,
    rssAfterMb: process.memoryUsage().rss / 2 ** 20,
    wallS: (performance.now() - started) / 1000,
    web,
  };
}

interface Accounting {
  answers: number;
  refusals: number;
  failures: number;
  duplicates: number;
  lost: number;
  refusalsWithoutRetryTime: number;
  outOfOrder: number;
}

function account(run: RunFigures): Accounting {
  const byTag = new Map<string, Seen[]>();
  for (const s of run.seen) {
    const tag = tagOf(s.message.text);
    if (tag !== undefined) byTag.set(tag, [...(byTag.get(tag) ?? []), s]);
  }
  let lost = 0;
  let duplicates = 0;
  for (let i = 0; i < run.sent; i++) {
    const handled = byTag.get(String(i)) ?? [];
    if (handled.length === 0 || handled.every((s) => s.replies.length === 0)) lost++;
    // The same message handled twice, or one message answered twice.
    duplicates += Math.max(0, handled.length - 1) + handled.reduce((n, s) => n + Math.max(0, s.replies.length - 1), 0);
  }
  const kinds = run.seen.map((s) => s.replies[0]?.kind);
  const refusals = run.seen.filter((s) => s.replies[0]?.kind === 'busy');
  // Replies in each conversation leave in arrival order.
  let outOfOrder = 0;
  const byConversation = new Map<string, Seen[]>();
  for (const s of run.seen) byConversation.set(conversationId(s.message.key), [...(byConversation.get(conversationId(s.message.key)) ?? []), s]);
  for (const list of byConversation.values()) {
    const replied = list.filter((s) => s.replies.length > 0).sort((a, b) => a.arrivedAt - b.arrivedAt);
    for (let i = 1; i < replied.length; i++) if (replied[i].replies[0].at < replied[i - 1].replies[0].at) outOfOrder++;
  }
  return {
    answers: kinds.filter((k) => k === 'answer').length,
    refusals: refusals.length,
    failures: kinds.filter((k) => k === 'error').length,
    duplicates,
    lost,
    refusalsWithoutRetryTime: refusals.filter((s) => !/try again in ~?\d+ s/.test(s.replies[0].text)).length,
    outOfOrder,
  };
}

/**
 * The round-robin promise, checked on the engine's start order: while a message waits, no
 * other single user gets more than (its own queue ahead of it) + BATCH + 1 jobs started.
 * "Ahead of it" counts the earlier messages of the same user or the same conversation that
 * had not started yet when it arrived: those it must wait for by design.
 */
function roundRobinViolations(run: RunFigures, engine: ObservedEngine): { worst: number; violations: string[] } {
  const startOf = new Map<string, number>();
  for (const s of engine.started) {
    const tag = tagOf(s.question);
    if (tag !== undefined && !startOf.has(tag)) startOf.set(tag, s.at);
  }
  const accepted = run.seen.filter((s) => s.replies[0]?.kind === 'answer' && startOf.has(tagOf(s.message.text) ?? ''));
  const userOf = (s: Seen) => `${s.message.key.platform}:${s.message.author.id}`;
  let worst = 0;
  const violations: string[] = [];
  for (const m of accepted) {
    const mStart = startOf.get(tagOf(m.message.text)!)!;
    const ahead = accepted.filter(
      (o) => o !== m && o.arrivedAt < m.arrivedAt && startOf.get(tagOf(o.message.text)!)! > m.arrivedAt && (userOf(o) === userOf(m) || conversationId(o.message.key) === conversationId(m.message.key)),
    ).length;
    const overtakes = new Map<string, number>();
    for (const o of accepted) {
      const oStart = startOf.get(tagOf(o.message.text)!)!;
      if (userOf(o) !== userOf(m) && o.arrivedAt > m.arrivedAt && oStart < mStart) overtakes.set(userOf(o), (overtakes.get(userOf(o)) ?? 0) + 1);
    }
    const most = Math.max(0, ...overtakes.values());
    worst = Math.max(worst, most - ahead);
    if (most > ahead + BATCH + 1) violations.push(`msg${tagOf(m.message.text)}: ${most} jobs of one later user started first, ${ahead} of its own ahead`);
  }
  return { worst, violations };
}

function webRows(w: PageFigures): [string, string | number][] {
  return [
    ['web chat: messages / answers / refusals / failures', `${w.sent} / ${w.answers} / ${w.refusals} / ${w.failures}`],
    ['web chat: refusals without a retry time (must be 0)', w.refusalsWithoutRetryTime],
    ['web chat pages: duplicates (must be 0)', w.duplicates],
    ['web chat pages: lost (must be 0)', w.lost],
    ['web chat pages: out of order (must be 0)', w.outOfOrder],
    ['web chat pages: broken event frames (must be 0)', w.brokenFrames],
  ];
}

/** What every run promises the web chat's pages: each question sent has exactly one reply, saved and streamed, in order. */
function expectWebKept(w: PageFigures): void {
  expect(w.sent).toBeGreaterThan(0);
  expect(w.duplicates).toBe(0);
  expect(w.lost).toBe(0);
  expect(w.outOfOrder).toBe(0);
  expect(w.brokenFrames).toBe(0);
  expect(w.refusalsWithoutRetryTime).toBe(0);
  expect(w.answers + w.refusals + w.failures).toBe(w.sent);
}

const env = { FROMAGE_BATCH: String(BATCH), FROMAGE_USER_RATE: '30', FROMAGE_USER_BURST: '8', FROMAGE_QUEUE_LIMIT: '60', FROMAGE_THREADS: '1' };

describe('load', () => {
  it(`answers ${SIZES.messages} messages from ${SIZES.users} users over ${SIZES.conversations} conversations exactly once, in order`, async () => {
    const engine = new ObservedEngine(await FromageEngine.start({ bundleDir: bundle, indexDirs: [], fetch: false, threads: 1, batch: BATCH, kvCacheMb: KV_CACHE_MB, onLog: () => undefined }));
    const bot = await startSoakBot({ engine, env });
    try {
      // Warm up (first graph calls, adapters' first requests) before "memory before" is taken.
      await runTraffic(bot, SEED ^ 0x5eed, undefined, 20);
      bot.seen.length = 0;
      engine.started.length = 0;
      bot.waits.length = 0;
      const run = await runTraffic(bot, SEED);
      const a = account(run);
      const rr = roundRobinViolations(run, engine);
      const mentions = mentionProblems(bot);
      const leaks = await secretLeaks(bot);
      printTable('load', [
        ['messages', run.sent],
        ['Slack redeliveries (same event_id)', run.redelivered],
        ['answers', a.answers],
        ['refusals (with retry time)', `${a.refusals} (${a.refusals - a.refusalsWithoutRetryTime})`],
        ['failures', a.failures],
        ['duplicates (must be 0)', a.duplicates],
        ['lost (must be 0)', a.lost],
        ['out of order (must be 0)', a.outOfOrder],
        ['queue wait p50 / p99', `${percentile(bot.waits, 50).toFixed(0)} ms / ${percentile(bot.waits, 99).toFixed(0)} ms`],
        ['round-robin: worst overtakes beyond own queue', `${rr.worst} (bound ${BATCH + 1})`],
        ['peak RSS', `${run.peakRssMb.toFixed(0)} MB`],
        ['RSS before / after', `${run.rssBeforeMb.toFixed(0)} MB / ${run.rssAfterMb.toFixed(0)} MB (bound +${RSS_GROWTH_BOUND_MB} MB)`],
        ...webRows(run.web),
        ['posts that could ping (must be 0)', mentions.length],
        ['secrets in logs, replies, posts, web pages, /healthz, /metrics (must be 0)', leaks.length],
        ['Discord gateway reconnects', bot.discord.connections.length - 1],
        ['wall time', `${run.wallS.toFixed(1)} s`],
      ]);
      expect(a.duplicates).toBe(0);
      expect(a.lost).toBe(0);
      expect(a.answers + a.refusals).toBe(run.sent);
      expect(a.failures).toBe(0);
      expect(a.refusalsWithoutRetryTime).toBe(0);
      expect(a.outOfOrder).toBe(0);
      expectWebKept(run.web);
      expect(run.web.failures).toBe(0);
      expect(rr.violations).toEqual([]);
      expect(mentions).toEqual([]);
      expect(run.rssAfterMb - run.rssBeforeMb).toBeLessThan(RSS_GROWTH_BOUND_MB);
      expect(bot.crashes).toEqual([]);
      expect(leaks).toEqual([]);
    } finally {
      await bot.close();
    }
  }, 300_000);

  it(`survives ${SIZES.workerKills} model worker crashes during the load: one clear failure per job in flight, serving resumes`, async () => {
    const engine = new ObservedEngine(
      await FromageEngine.start({ bundleDir: bundle, indexDirs: [], fetch: false, threads: 1, batch: BATCH, kvCacheMb: KV_CACHE_MB, onLog: () => undefined, workerEntry: new URL('./kill-switch-worker.mjs', import.meta.url) }),
    );
    const bot = await startSoakBot({ engine, env });
    const killSwitch = new BroadcastChannel('fromage-soak-kill-worker');
    try {
      const random = randomFrom(SEED ^ 0xdead);
      // Random moments, as counts of messages sent so far.
      const moments = Array.from({ length: SIZES.workerKills }, () => Math.floor(random() * SIZES.messages * 0.8)).sort((a, b) => a - b);
      let kills = 0;
      const run = await runTraffic(bot, SEED ^ 0xbeef, (sent) => {
        while (kills < moments.length && sent >= moments[kills]) {
          kills++;
          killSwitch.postMessage('die');
        }
      });
      const a = account(run);
      const failures = run.seen.filter((s) => s.replies[0]?.kind === 'error');
      const unclear = failures.filter((s) => !/The model stopped while answering this \(it restarts by itself\); please send your message again\./.test(s.replies[0].text));
      // Serving resumed: a message after the last crash is answered.
      const after = await (async () => {
        const { deliver: send, makePlaces: places } = await import('./traffic.ts');
        const place = places(1)[0];
        const before = bot.seen.length;
        await send(bot, place, 0, 'msg999999 are you back?');
        await until(() => bot.seen.length > before && bot.seen[before].finished, 30_000, () => 'no answer after the crashes');
        return bot.seen[before].replies;
      })();
      printTable('model worker crashes under load', [
        ['messages', run.sent],
        ['worker kills', kills],
        ['answers', a.answers],
        ['refusals', a.refusals],
        ['failure replies (jobs in flight)', a.failures],
        ['duplicates (must be 0)', a.duplicates],
        ['lost (must be 0)', a.lost],
        ...webRows(run.web),
        ['answer after the last crash', after[0]?.kind ?? 'none'],
        ['Discord gateway reconnects', bot.discord.connections.length - 1],
      ]);
      expect(kills).toBe(SIZES.workerKills);
      expect(a.duplicates).toBe(0);
      expect(a.lost).toBe(0);
      expect(a.answers + a.refusals + a.failures).toBe(run.sent);
      // Only the jobs in flight at each crash fail: the scheduler hands the engine at most BATCH at a time.
      expect(a.failures).toBeLessThanOrEqual(kills * BATCH);
      expectWebKept(run.web);
      expect(unclear.map((s) => s.replies[0].text)).toEqual([]);
      expect(after.map((r) => r.kind)).toEqual(['answer']);
      expect(bot.crashes).toEqual([]);
    } finally {
      killSwitch.close();
      await bot.close();
    }
  }, 300_000);
});
