/**
 * Load, and model worker crashes under load: many users over many conversations on Discord and
 * Slack, in bursts, through the real adapters, service and fixture engine. Promises (README,
 * "Reliability"): every accepted message gets exactly one answer; every refused one exactly one
 * refusal saying when to retry; nothing is lost or answered twice; each conversation is
 * answered in arrival order; a user waiting behind others' bursts sees at most a bounded number
 * of any one other user's jobs start first (round-robin); memory after the run stays within a
 * stated bound. With the worker killed at random moments, the jobs in flight get one clear
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
import { deliver, FIXTURE_PNG, makePlaces, type Place } from './traffic.ts';

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
  } finally {
    clearInterval(sampler);
  }
  return {
    sent,
    redelivered,
    seen: bot.seen.slice(first),
    peakRssMb: peak / 2 ** 20,
    rssBeforeMb: rssBefore / 2 ** 20,
    rssAfterMb: process.memoryUsage().rss / 2 ** 20,
    wallS: (performance.now() - started) / 1000,
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
        ['posts that could ping (must be 0)', mentions.length],
        ['secrets in logs, replies, posts, /healthz, /metrics (must be 0)', leaks.length],
        ['Discord gateway reconnects', bot.discord.connections.length - 1],
        ['wall time', `${run.wallS.toFixed(1)} s`],
      ]);
      expect(a.duplicates).toBe(0);
      expect(a.lost).toBe(0);
      expect(a.answers + a.refusals).toBe(run.sent);
      expect(a.failures).toBe(0);
      expect(a.refusalsWithoutRetryTime).toBe(0);
      expect(a.outOfOrder).toBe(0);
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
        ['answer after the last crash', after[0]?.kind ?? 'none'],
        ['Discord gateway reconnects', bot.discord.connections.length - 1],
      ]);
      expect(kills).toBe(SIZES.workerKills);
      expect(a.duplicates).toBe(0);
      expect(a.lost).toBe(0);
      expect(a.answers + a.refusals + a.failures).toBe(run.sent);
      // Only the jobs in flight at each crash fail: the scheduler hands the engine at most BATCH at a time.
      expect(a.failures).toBeLessThanOrEqual(kills * BATCH);
      expect(unclear.map((s) => s.replies[0].text)).toEqual([]);
      expect(after.map((r) => r.kind)).toEqual(['answer']);
      expect(bot.crashes).toEqual([]);
    } finally {
      killSwitch.close();
      await bot.close();
    }
  }, 300_000);
});
