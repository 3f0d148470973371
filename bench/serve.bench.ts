/**
 * `npm run bench:serve`: conversation-speed serving through the real FromageEngine (worker
 * thread, the service's prompt builder), on a bundle given by --bundle or, by default, a
 * random-weight OPT-125m-shaped one built (once, then reused) under --work.
 *
 *  load. engine start until ready, and to the first token of a first answer (fresh engines);
 *        where the time goes in-process: manifest + tokenizer, each graph's session, RSS split.
 *  a. multi-turn: a 12-turn dialogue (~30 words of user text per turn, an image every 4th
 *     turn, 32-token answers): time to first token per turn, reuse off (kvCacheMb 0) vs on
 *     (the engine's default budget).
 *  b. resume: that dialogue's turn 13 on a fresh engine, from the disk spill (kvDir) vs cold.
 *  c. concurrency: 1, 2, 4, 8 conversations at once: aggregate tokens/s, per-conversation
 *     ms/token (the default FROMAGE_BATCH, so 8 at once means 4 decoding and 4 waiting), the
 *     decoding-only aggregate (rows / step), and the ceiling prefill leaves the aggregate ratio.
 *
 * Every engine gets the settings `fromage serve` passes with an empty .env (threads, batch,
 * kept-cache budget and codec) unless a section says otherwise.
 *  d. memory: peak RSS (in a child process of its own) with 4 active conversations plus kept
 *     caches filled to the budget.
 *
 * Engine options this bench sets (kvCacheMb, kvDiskMb, kvDir, batch) are looked up in the
 * engine's worker protocol; a feature not in this build is printed "n/a (not available in this
 * build)", never estimated. Greedy decoding throughout; time to first token = from the chat
 * call to the first onText callback.
 *
 *   npm run bench:serve -- [--bundle DIR] [--weights int4|fp32] [--work DIR] [--turns 12]
 *                          [--answer 32] [--only load,a,b,c,d] [--kv-mb N (section d; default 512,
 *                          or the bundle's least accepted budget when larger)]
 */
import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { createHash } from 'node:crypto';
import type { StoredImage, Turn } from '../src/conversation/history.ts';
import { buildPrompt } from '../src/conversation/prompt.ts';
import { DEFAULT_SETTINGS } from '../src/conversation/types.ts';
import { readManifest, TOKENIZER_FILE } from '../src/model/bundle.ts';
import { FromageEngine, type EngineOptions } from '../src/model/engine.ts';
import { openPreparedDecoder, preparedDir, readPreparedInfo } from '../src/model/prepared-decoder.ts';
import { createSession } from '../src/model/session.ts';
import { resolveThreads } from '../src/model/threads.ts';
import { loadConfig } from '../src/config.ts';
import { kvBundleInfo, minimumKvCacheBytes } from '../src/serving/kv-config.ts';
import { Tokenizer } from '../src/model/tokenizer/tokenizer.ts';
import { benchBundle, benchWork, BUNDLE_OPTIONS } from './bench-bundle.ts';
import { SYNTHETIC_WORDS } from './synthetic-bundle.ts';
import { xorshift32 } from './xorshift.ts';
import { median } from './median.ts';

const NA = 'n/a (not available in this build)';
const out = (s: string): boolean => process.stdout.write(s);

/** Engine options this build's worker protocol declares (the serving features arrive separately). */
function engineSupports(option: string): boolean {
  const protocol = readFileSync(new URL('../src/model/worker-protocol.ts', import.meta.url), 'utf8');
  return new RegExp(`\\b${option}\\??\\s*:`).test(protocol);
}

interface Features {
  readonly reuse: boolean;
  readonly spill: boolean;
  readonly batch: boolean;
}

function features(): Features {
  return { reuse: engineSupports('kvCacheMb'), spill: engineSupports('kvDir'), batch: engineSupports('batch') };
}

/** Options beyond the base set, passed only when the build knows them. */
/** What `fromage serve` passes with an empty .env (batch, kept-cache budget and codec, threads), then `extra`. */
const USER_DEFAULTS = loadConfig({});

function engineOptions(bundleDir: string, extra: Record<string, unknown> = {}): EngineOptions {
  const defaults = {
    threads: USER_DEFAULTS.FROMAGE_THREADS || undefined,
    batch: USER_DEFAULTS.FROMAGE_BATCH,
    kvCacheMb: USER_DEFAULTS.FROMAGE_KV_CACHE_MB,
    kvCodec: USER_DEFAULTS.FROMAGE_KV_CODEC,
  };
  return { bundleDir, indexDirs: [], fetch: false, onLog: () => undefined, ...defaults, ...extra } as EngineOptions;
}

/** A user turn's text; `conversation` > 0 gives another conversation other words (0: the dialogue of sections a and b). */
function userText(turn: number, words: number, conversation = 0): string {
  const next = xorshift32(1000 + turn + 10007 * conversation);
  return Array.from({ length: words }, () => SYNTHETIC_WORDS[Math.floor(next() * SYNTHETIC_WORDS.length)]).join(' ') + '?';
}

/** A 640x480 picture, different per seed (PNG, as the service stores images). */
async function picture(seed: number): Promise<StoredImage> {
  const next = xorshift32(seed);
  const w = 640;
  const h = 480;
  const px = Buffer.alloc(w * h * 3);
  const [a, b, c] = [next() * 255, next() * 255, next() * 255];
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const i = (y * w + x) * 3;
    px[i] = (a + x) & 255;
    px[i + 1] = (b + y) & 255;
    px[i + 2] = (c + x + y) & 255;
  }
  const data = await sharp(px, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer();
  return { hash: createHash('sha256').update(data).digest('hex'), data };
}

interface TurnTiming {
  readonly positions: number;
  readonly ttftMs: number;
  readonly totalMs: number;
  readonly tokens: number;
}

/** Runs one chat turn, timing the first onText callback. */
async function timedChat(engine: FromageEngine, history: readonly Turn[], current: Turn, answer: number): Promise<{ timing: TurnTiming; historyText: string }> {
  const prompt = await buildPrompt(history, current, { contextLength: engine.info.contextLength, nVisualTokens: engine.info.nVisualTokens, maxWords: answer, countTokens: (t) => engine.countTokens(t) });
  let first = 0;
  const t0 = performance.now();
  const r = await engine.chat(prompt.items, { ...DEFAULT_SETTINGS, maxWords: answer, temperature: 0 }, { onText: () => (first ||= performance.now()) });
  const end = performance.now();
  const historyText = r.historyText ?? r.segments.flatMap((s) => (s.type === 'text' ? [s.text] : [])).join(' ');
  return { timing: { positions: prompt.length, ttftMs: (first || end) - t0, totalMs: end - t0, tokens: r.generatedTokens }, historyText };
}

/** The dialogue's turns 1..n (user turns, images every 4th), answered by `engine`; returns timings and the history. */
async function dialogue(engine: FromageEngine, turns: number, answer: number, words: number, history: Turn[] = [], conversation = 0): Promise<{ timings: TurnTiming[]; history: Turn[] }> {
  const timings: TurnTiming[] = [];
  const start = history.filter((t) => t.role === 'user').length;
  for (let t = start + 1; t <= start + turns; t++) {
    const current: Turn = { role: 'user', text: userText(t, words, conversation), images: t % 4 === 1 ? [await picture(t + 10007 * conversation)] : [], at: t };
    const { timing, historyText } = await timedChat(engine, history, current, answer);
    timings.push(timing);
    history.push(current, { role: 'bot', text: historyText, images: [], at: t });
  }
  return { timings, history };
}

const ms = (x: number): string => `${x.toFixed(0)} ms`;

/** Wall and CPU time (all threads of this process) of `f`: on a shared machine CPU time is the steadier figure. */
async function timed<T>(f: () => Promise<T>): Promise<{ value: T; text: string }> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const value = await f();
  const c = process.cpuUsage(c0);
  return { value, text: `${ms(performance.now() - t0)} (cpu ${ms((c.user + c.system) / 1000)})` };
}

async function sectionLoad(bundleDir: string, answer: number): Promise<void> {
  out('\nload. fresh engine (worker thread) until ready, then the first answer\n');
  const manifest0 = await readManifest(bundleDir);
  const preparedInfo = await readPreparedInfo(preparedDir(bundleDir, manifest0).dir);
  const hasPrepared = preparedInfo?.status === 'ok';
  out(
    hasPrepared
      ? `this CPU has a prepared decoder (${preparedDir(bundleDir, manifest0).dir}): runs alternate between it and the bundle's decoder\n`
      : `no prepared decoder for this CPU (${preparedInfo ? `refused: ${preparedInfo.reason}` : '`fromage prepare` makes one'}): bundle's decoder only\n`,
  );
  out('run | decoder | engine ready | first token of the first answer | first answer done | cpu to ready, to done (all threads)\n');
  const arms = hasPrepared ? [true, false, false, true] : [false, false];
  const readyBy = new Map<boolean, number[]>();
  for (const [i, usePrepared] of arms.entries()) {
    const run = i + 1;
    const image = await picture(1);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const engine = await FromageEngine.start(engineOptions(bundleDir, { preparedDecoder: usePrepared }));
    const ready = performance.now() - t0;
    const cReady = process.cpuUsage(c0);
    const { timing } = await timedChat(engine, [], { role: 'user', text: userText(1, 30), images: [image], at: 0 }, answer);
    const cDone = process.cpuUsage(c0);
    const cpu = (c: NodeJS.CpuUsage): string => ms((c.user + c.system) / 1000);
    out(`${String(run).padStart(3)} | ${(usePrepared ? 'prepared' : 'bundle').padEnd(8)} | ${ms(ready).padStart(12)} | ${ms(ready + timing.ttftMs).padStart(30)} | ${ms(ready + timing.totalMs).padStart(17)} | ${cpu(cReady)}, ${cpu(cDone)}\n`);
    readyBy.set(usePrepared, [...(readyBy.get(usePrepared) ?? []), ready + timing.ttftMs]);
    await engine.close();
  }
  if (hasPrepared) {
    const p = median(readyBy.get(true) ?? []);
    const b = median(readyBy.get(false) ?? []);
    out(`start to first token, median: prepared ${ms(p)}, bundle ${ms(b)} (bundle / prepared ${(b / p).toFixed(2)}x; goal: within 10 s)\n`);
  }
  // Where it goes, in this process, one part after another.
  const parts: string[] = [];
  const m = await timed(() => readManifest(bundleDir));
  const manifest = m.value;
  parts.push(`manifest ${m.text}`);
  parts.push(`tokenizer ${(await timed(() => Tokenizer.fromFile(join(bundleDir, TOKENIZER_FILE)))).text}`);
  const sessions = [];
  for (const graph of ['vision', 'embed', 'decoder'] as const) {
    const s = await timed(() => createSession(join(bundleDir, manifest.graphs[graph]), {}));
    sessions.push(s.value.session);
    parts.push(`${graph} session ${s.text}`);
  }
  const rss = residentBreakdown();
  out(`in-process, one after another: ${parts.join(', ')}${rss ? `; resident ${rss.anon.toFixed(2)} GiB private + ${rss.file.toFixed(2)} GiB file-backed` : ''}\n`);
  await Promise.all(sessions.map((s) => s.release()));
  if (hasPrepared) {
    const prep = await timed(() => openPreparedDecoder(bundleDir, manifest, {}, (w) => out(`warning: ${w}\n`)));
    const rssP = residentBreakdown();
    out(`decoder from the prepared copy (with its probe call): ${prep.text}${rssP ? `; resident ${rssP.anon.toFixed(2)} GiB private + ${rssP.file.toFixed(2)} GiB file-backed` : ''}\n`);
    await prep.value.session?.release();
  }
  // Without prepacking the decoder loads but runs far slower: the difference is what
  // onnxruntime spends building its private packed copies of the weights.
  const bare = await timed(() => createSession(join(bundleDir, manifest.graphs.decoder), { configEntries: { 'session.disable_prepacking': '1' } }));
  out(`decoder session without weight prepacking (not usable for serving: far slower steps): ${bare.text}\n`);
  await bare.value.session.release();
}

async function sectionMultiTurn(bundleDir: string, f: Features, turns: number, answer: number): Promise<Turn[]> {
  out(`\na. multi-turn: ${turns} turns, ~30 words per user turn, an image every 4th turn, ${answer}-token answers; time to first token\n`);
  const off = await FromageEngine.start(engineOptions(bundleDir, f.reuse ? { kvCacheMb: 0 } : {}));
  const cold = await dialogue(off, turns, answer, 30).finally(() => off.close());
  let warm: TurnTiming[] | undefined;
  if (f.reuse) {
    const on = await FromageEngine.start(engineOptions(bundleDir));
    warm = (await dialogue(on, turns, answer, 30).finally(() => on.close())).timings;
  }
  out('turn | prompt positions | reuse off | reuse on\n');
  cold.timings.forEach((c, i) => out(`${String(i + 1).padStart(4)} | ${String(c.positions).padStart(16)} | ${ms(c.ttftMs).padStart(9)} | ${warm ? ms(warm[i].ttftMs) : NA}\n`));
  const last = cold.timings.length - 1;
  out(`turn ${last + 1} / turn 1: reuse off ${(cold.timings[last].ttftMs / cold.timings[0].ttftMs).toFixed(2)}x, reuse on ${warm ? `${(warm[last].ttftMs / warm[0].ttftMs).toFixed(2)}x` : NA} (goal with reuse: <= 1.5x)\n`);
  return cold.history;
}

async function sectionResume(bundleDir: string, f: Features, turns: number, answer: number, work: string): Promise<void> {
  out(`\nb. resume: turn ${turns + 1} on a fresh engine, from the disk spill vs cold\n`);
  // Cold: reuse off, the whole dialogue prefilled.
  const base = await FromageEngine.start(engineOptions(bundleDir, f.reuse ? { kvCacheMb: 0 } : {}));
  const built = await dialogue(base, turns, answer, 30);
  await base.close();
  const coldEngine = await FromageEngine.start(engineOptions(bundleDir, f.reuse ? { kvCacheMb: 0 } : {}));
  const cold = (await dialogue(coldEngine, 1, answer, 30, [...built.history]).finally(() => coldEngine.close())).timings[0];
  let resumed: TurnTiming | undefined;
  if (f.spill) {
    const kvDir = await mkdtemp(join(work, 'kv-'));
    try {
      const spill = { kvDir, ...(engineSupports('kvDiskMb') ? { kvDiskMb: 4096 } : {}) };
      const first = await FromageEngine.start(engineOptions(bundleDir, spill));
      const spilled = await dialogue(first, turns, answer, 30).finally(() => first.close());
      const second = await FromageEngine.start(engineOptions(bundleDir, spill));
      resumed = (await dialogue(second, 1, answer, 30, spilled.history).finally(() => second.close())).timings[0];
    } finally {
      await rm(kvDir, { recursive: true, force: true });
    }
  }
  out('turn 13 | prompt positions | time to first token\n');
  out(`cold    | ${String(cold.positions).padStart(16)} | ${ms(cold.ttftMs)}\n`);
  out(`resumed | ${String(resumed?.positions ?? cold.positions).padStart(16)} | ${resumed ? `${ms(resumed.ttftMs)} (${(cold.ttftMs / resumed.ttftMs).toFixed(1)}x faster)` : NA}\n`);
}

async function sectionConcurrency(bundleDir: string, f: Features, answer: number): Promise<void> {
  out(`\nc. concurrency: N conversations at once, ~60-position prompts, ${answer}-token answers${f.batch ? ` (FROMAGE_BATCH=${USER_DEFAULTS.FROMAGE_BATCH}, the default: more conversations wait for a row)` : ''}\n`);
  if (!f.batch) out(`   batched decoding: ${NA}; the figures below are this build serving one answer at a time\n`);
  const engine = await FromageEngine.start(engineOptions(bundleDir));
  try {
    await timedChat(engine, [], { role: 'user', text: userText(99, 10), images: [], at: 0 }, 4);
    out('at once | aggregate tokens/s | per-conversation ms/token (median) | decoding only, tokens/s | first token (median) | wall\n');
    let base: { tps: number; decodeTps: number; firstMs: number; stepMs: number; tokens: number } | undefined;
    const bounds: string[] = [];
    for (const n of [1, 2, 4, 8]) {
      const t0 = performance.now();
      const runs = await Promise.all(
        Array.from({ length: n }, async (_, i) => {
          const steps: number[] = [];
          let first = 0;
          let last = 0;
          const history: Turn[] = [];
          const current: Turn = { role: 'user', text: userText(200 + 10 * n + i, 45), images: [], at: 0 };
          const prompt = await buildPrompt(history, current, { contextLength: engine.info.contextLength, nVisualTokens: engine.info.nVisualTokens, maxWords: answer, countTokens: (t) => engine.countTokens(t) });
          const r = await engine.chat(prompt.items, { ...DEFAULT_SETTINGS, maxWords: answer, temperature: 0 }, {
            onText: () => {
              const now = performance.now();
              if (last) steps.push(now - last);
              else first = now - t0;
              last = now;
            },
          });
          return { tokens: r.generatedTokens, msPerToken: median(steps), firstMs: first };
        }),
      );
      const wall = (performance.now() - t0) / 1000;
      const tokens = runs.reduce((s, r) => s + r.tokens, 0);
      const tps = tokens / wall;
      const stepMs = median(runs.map((r) => r.msPerToken));
      // Rows decoding together: FROMAGE_BATCH at most; each of them gives a token per step.
      const decodeTps = (Math.min(n, USER_DEFAULTS.FROMAGE_BATCH) * 1000) / stepMs;
      const firstMs = median(runs.map((r) => r.firstMs));
      if (!base) base = { tps, decodeTps, firstMs, stepMs, tokens };
      const ratio = (v: number, b: number): string => (n > 1 ? ` (${(v / b).toFixed(2)}x)` : '        ');
      out(`${String(n).padStart(7)} | ${tps.toFixed(1).padStart(18)}${ratio(tps, base.tps)} | ${stepMs.toFixed(1).padStart(35)} | ${decodeTps.toFixed(1).padStart(24)}${ratio(decodeTps, base.decodeTps)} | ${ms(firstMs).padStart(20)} | ${wall.toFixed(1)} s\n`);
      if (n > 1) {
        // The most batching could give: each prompt's prefill costs what the lone one did (it is
        // compute-bound, so prefilling them together saves nothing), and an n-row step costs no
        // more than a 1-row one.
        // (The prefill gives the first token; the steps give the rest.)
        const bestWallMs = n * base.firstMs + (tokens / n - 1) * base.stepMs;
        bounds.push(`${n}: ${(tokens / (bestWallMs / 1000) / base.tps).toFixed(2)}x`);
      }
    }
    if (base) {
      out(`ceiling on the aggregate ratio from these figures (each prompt's prefill, ${ms(base.firstMs)} to the first token alone, costs the same at once; an n-row step costs a 1-row one): ${bounds.join(', ')}\n`);
    }
  } finally {
    await engine.close();
  }
}

/** d runs in a child process so its peak RSS is its own. */
async function sectionMemory(bundleDir: string, f: Features, answer: number, kvMb: number): Promise<void> {
  out(`\nd. memory: peak RSS with 4 active conversations plus kept caches at a ${kvMb} MB budget\n`);
  if (!f.reuse) {
    out(`   kept caches: ${NA}\n`);
    return;
  }
  const report = await new Promise<{ loadedMiB: number; modelMiB: number; peakMiB: number; kvPeakMiB: number; liveAtPeakMiB: number; otherMaxMiB: number; budgetMiB: number; filled: number; evictions: number; spillWrites: number }>((res, rej) => {
    const c = fork(process.argv[1], ['--memory-child', bundleDir, String(answer), String(kvMb)], { execArgv: ['--import', 'tsx'] });
    let got: { loadedMiB: number; modelMiB: number; peakMiB: number; kvPeakMiB: number; liveAtPeakMiB: number; otherMaxMiB: number; budgetMiB: number; filled: number; evictions: number; spillWrites: number } | undefined;
    c.on('message', (m) => (got = m as typeof got));
    c.on('exit', (code) => (code === 0 && got ? res(got) : rej(new Error(`memory child failed (exit ${code})`))));
  });
  out(`model loaded: ${report.loadedMiB.toFixed(0)} MiB RSS; model at work (after 4 answers at once, their KV caches counted out): ${report.modelMiB.toFixed(0)} MiB\n`);
  out(`peak: ${report.peakMiB.toFixed(0)} MiB; peak - model at work = ${(report.peakMiB - report.modelMiB).toFixed(0)} MiB against a KV budget (live + kept caches) of ${report.budgetMiB.toFixed(0)} MiB (goal: within it)\n`);
  out(`KV caches counted (sampled every 100 ms): peak live + kept ${report.kvPeakMiB.toFixed(0)} MiB (live ${report.liveAtPeakMiB.toFixed(0)} MiB then) against the budget of ${report.budgetMiB.toFixed(0)} MiB; ${report.filled} 2-turn conversations kept before the 4, ${report.evictions} evictions in all, ${report.spillWrites} written to the disk spill\n`);
  out(`RSS less the KV bytes counted (sampled with them): at most ${report.otherMaxMiB.toFixed(0)} MiB, ${(report.otherMaxMiB - report.modelMiB).toFixed(0)} MiB above the model at work (onnxruntime's arena and the allocators' free lists growing while caches come and go)\n`);
}

/** Bounds section d's filling (an OPT-6.7B-shaped turn takes seconds). */
const FILL_DIALOGUES_MAX = 64;

async function memoryChild(bundleDir: string, answer: number, kvMb: number): Promise<void> {
  // The disk spill on, as `fromage serve` has it by default: evicted caches wait in memory for their write.
  const kvDir = await mkdtemp(join(tmpdir(), 'fromage-serve-d-kv-'));
  const spill = engineSupports('kvDir') ? { kvDir, ...(engineSupports('kvDiskMb') ? { kvDiskMb: USER_DEFAULTS.FROMAGE_KV_DISK_MB } : {}) } : {};
  const engine = await FromageEngine.start(engineOptions(bundleDir, { kvCacheMb: kvMb, batch: 4, ...spill }));
  await timedChat(engine, [], { role: 'user', text: userText(1, 5), images: [], at: 0 }, 2);
  const loadedMiB = process.memoryUsage().rss / 2 ** 20;
  // The model at work: 4 rows decoding and a full prefill chunk (an image and 70 words) have
  // sized onnxruntime's arena and the JS heap; the KV caches it leaves are counted out.
  await Promise.all(Array.from({ length: 4 }, (_, i) => dialogue(engine, 1, 4, 70, [], 2 * FILL_DIALOGUES_MAX + i)));
  const warm = await engine.servingStats();
  const modelMiB = (process.memoryUsage().rss - (warm?.batch.liveBytes ?? 0) - (warm?.kv?.bytes ?? 0)) / 2 ** 20;
  // Live + kept KV bytes as the engine counts them, beside the budget they share.
  let kvPeak = 0;
  let liveAtPeak = 0;
  let budget = 0;
  // RSS less the KV bytes counted at about the same moment: what the model, its working memory
  // and the allocators hold besides the caches, and how far it drifts while the caches churn.
  let otherMax = 0;
  const sampler = setInterval(() => {
    void engine.servingStats().then((st) => {
      const live = st?.batch.liveBytes ?? 0;
      // Entries evicted while their spill write runs stay allocated: they count until it ends.
      const kv = live + (st?.kv?.bytes ?? 0) + (st?.kv && 'writingBytes' in st.kv ? Number(st.kv.writingBytes) : 0);
      budget = st?.kv?.budgetBytes ?? budget;
      if (kv > kvPeak) [kvPeak, liveAtPeak] = [kv, live];
      otherMax = Math.max(otherMax, process.memoryUsage().rss - kv);
    });
  }, 100);
  // Separate conversations (each its own words: identical ones would share one kept prefix) until
  // the kept caches fill the budget (the store evicted, or holds 90% of it), then 4 at once on top.
  let filled = 0;
  for (let i = 1; i <= FILL_DIALOGUES_MAX; i++) {
    await dialogue(engine, 2, answer, 30, [], i);
    filled = i;
    const kv = (await engine.servingStats())?.kv;
    if (kv && (kv.evictions > 0 || kv.bytes >= 0.9 * kv.budgetBytes)) break;
  }
  await Promise.all(Array.from({ length: 4 }, (_, i) => dialogue(engine, 3, answer, 30, [], FILL_DIALOGUES_MAX + 1 + i)));
  clearInterval(sampler);
  const endStats = (await engine.servingStats())?.kv;
  const evictions = endStats?.evictions ?? 0;
  const spillWrites = endStats?.spillWrites ?? 0;
  await engine.close();
  await rm(kvDir, { recursive: true, force: true });
  const mib = 2 ** 20;
  process.send?.({ loadedMiB, modelMiB, peakMiB: process.resourceUsage().maxRSS / 1024, kvPeakMiB: kvPeak / mib, liveAtPeakMiB: liveAtPeak / mib, otherMaxMiB: otherMax / mib, budgetMiB: budget / mib, filled, evictions, spillWrites });
}

/** Section d's budget unless --kv-mb: 512 MB, or the least the engine accepts for this bundle when that is more (4128 MiB at 6.7B). */
async function defaultMemoryBudgetMb(bundleDir: string): Promise<number> {
  const manifest = await readManifest(bundleDir);
  return Math.max(512, Math.ceil(minimumKvCacheBytes(kvBundleInfo(manifest, bundleDir), USER_DEFAULTS.FROMAGE_KV_CODEC) / 2 ** 20));
}


/** Linux: resident memory split into private (anonymous) and file-backed pages, in GiB. */
function residentBreakdown(): { anon: number; file: number } | undefined {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const kib = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    const anon = kib('RssAnon');
    const file = kib('RssFile');
    return Number.isFinite(anon) && Number.isFinite(file) ? { anon: anon / 2 ** 20, file: file / 2 ** 20 } : undefined;
  } catch {
    return undefined;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      ...BUNDLE_OPTIONS,
      turns: { type: 'string', default: '12' },
      answer: { type: 'string', default: '32' },
      only: { type: 'string', default: 'load,a,b,c,d' },
      'kv-mb': { type: 'string', default: '' },
    },
  });
  const work = await benchWork(values);
  const t0 = performance.now();
  const bundleDir = await benchBundle(values, work);
  const m = JSON.parse(await readFile(join(bundleDir, 'fromage.json'), 'utf8')) as { model: { num_layers: number; hidden_size: number }; weights: { dtype: string } };
  const f = features();
  const only = new Set(values.only.split(','));
  const turns = Number(values.turns);
  const answer = Number(values.answer);
  out(`bench:serve  bundle ${bundleDir} (${m.model.num_layers} layers x ${m.model.hidden_size}, ${m.weights.dtype}), ready in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  out(`threads ${resolveThreads(Number(process.env.FROMAGE_THREADS) || 0).threads}; features in this build: reuse ${f.reuse ? 'yes' : 'no'}, disk spill ${f.spill ? 'yes' : 'no'}, batching ${f.batch ? 'yes' : 'no'}\n`);
  if (only.has('load')) await sectionLoad(bundleDir, answer);
  if (only.has('a')) await sectionMultiTurn(bundleDir, f, turns, answer);
  if (only.has('b')) await sectionResume(bundleDir, f, turns, answer, work);
  if (only.has('c')) await sectionConcurrency(bundleDir, f, answer);
  if (only.has('d')) await sectionMemory(bundleDir, f, answer, values['kv-mb'] ? Number(values['kv-mb']) : await defaultMemoryBudgetMb(bundleDir));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  // FromageEngine.close() unrefs the retiring worker and its wait, so with nothing else alive
  // the process would end (exit 13) before the next engine starts.
  const keepAlive = setInterval(() => undefined, 60_000);
  try {
    if (process.argv[2] === '--memory-child') await memoryChild(process.argv[3], Number(process.argv[4]), Number(process.argv[5]));
    else await main();
  } finally {
    clearInterval(keepAlive);
  }
}
