/**
 * `npm run bench:decode`: decoding speed of the runtime on random-weight bundles.
 *
 *  a. KV cache vs the reference's full recompute per token, OPT-125m shape (768 x 12 layers,
 *     vocab 50272), contexts 64 / 256 / 1024 / 2000: cached decode ms/token and tokens/s,
 *     recompute tokens/s and the ratio (recompute only up to --recompute-max, default 1024:
 *     beyond it one recomputed step takes seconds).
 *  b. (--bundle DIR) an existing bundle, e.g. the OPT-6.7B-shaped int4 one `npm run bench:convert --
 *     --shape opt-6.7b --clip tiny --keep` leaves in /tmp/fromage-bench-convert/opt-6.7b/bundle-int4:
 *     prefill tokens/s, decode ms/token (KV cache) and peak RSS.
 *  c. (--vision) CLIP ViT-L/14-shaped vision graph (1024 x 24 layers, 224 px, patch 14): ms/image.
 *  d. (--threads-compare, with or without --bundle) onnxruntime's own thread default against the
 *     count FROMAGE_THREADS=0 picks (src/model/threads.ts): prefill positions/s and decode
 *     ms/token, arms alternated over --rounds fresh loads, ratio printed.
 *
 * Synthetic sources are written in facebook/opt-* / openai/clip-* / FROMAGe layouts and go
 * through the real converter (convertBundle), so the graphs are the ones users get. Threads:
 * what a user gets (FROMAGE_THREADS, 0 = the CPUs this process may use).
 *
 *   npx tsx bench/decode.bench.ts [--contexts 64,256,1024,2000] [--tokens 8] [--recompute-max 1024] [--vision] [--keep DIR]
 *   npx tsx bench/decode.bench.ts --bundle DIR [--contexts 64] [--tokens 16]
 *   npx tsx bench/decode.bench.ts [--bundle DIR] --threads-compare [--contexts 256] [--tokens 16] [--rounds 2]
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openBundle } from '../src/model/bundle.ts';
import { generateTokens, generateTokensRecompute, type GenerateSettings } from '../src/model/generate.ts';
import { FromageGraphs } from '../src/model/graphs.ts';
import type { AssembledPrompt } from '../src/model/prompt.ts';
import type { SessionOptions } from '../src/model/session.ts';
import { resolveThreads } from '../src/model/threads.ts';
import { syntheticBundle } from './synthetic-bundle.ts';
import { median } from './median.ts';

function randomPrompt(graphs: FromageGraphs, length: number): Promise<AssembledPrompt> {
  const ids = Array.from({ length }, (_, i) => 4 + ((i * 7919) % (graphs.vocab - 6)));
  return graphs.embedTokens(ids).then((embeds) => ({ embeds, length, segments: [], textIds: ids, textPositions: ids.map((_, i) => i) }));
}

/** b: prefill and cached decode on a given bundle (no recompute: at 6.7B it would take minutes per token). */
async function benchBundle(dir: string, contexts: number[], tokens: number, threads: SessionOptions['threads']): Promise<void> {
  const t0 = performance.now();
  const bundle = await openBundle(dir, { threads });
  const m = bundle.manifest;
  process.stdout.write(`bundle ${dir}: ${m.model.num_layers} x ${m.model.hidden_size}, vocab ${m.model.vocab_size}, weights ${m.weights.dtype}; loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  const graphs = new FromageGraphs(bundle);
  const settings: GenerateSettings = { numWords: tokens, seed: 0, maxPositions: m.model.max_positions, retId: m.tokens.ret, retScaleFactor: 1, minWordTokens: 0, temperature: 0, topP: 1 };
  process.stdout.write('context | prefill tok/s | decode ms/token (median) | decode tok/s\n');
  for (const ctx of contexts) {
    const prompt = await randomPrompt(graphs, ctx);
    let prefillMs = 0;
    const steps: number[] = [];
    const start = performance.now();
    let last = start;
    await generateTokens(graphs, prompt, settings, {
      onToken: (ids) => {
        const now = performance.now();
        if (ids.length === 1) prefillMs = now - start;
        else steps.push(now - last);
        last = now;
      },
    });
    steps.sort((a, b) => a - b);
    const median = steps[Math.floor(steps.length / 2)];
    process.stdout.write(`${String(ctx).padStart(7)} | ${(ctx / (prefillMs / 1000)).toFixed(1).padStart(13)} | ${median.toFixed(1).padStart(24)} | ${(1000 / median).toFixed(2)}\n`);
  }
  process.stdout.write(`peak RSS ${(process.resourceUsage().maxRSS / 2 ** 20).toFixed(2)} GiB, threads ${resolveThreads(typeof threads === 'number' ? threads : 0).threads}\n`);
  const now = residentBreakdown();
  // File-backed pages are the mapped weight files: the kernel can drop them under pressure.
  if (now) process.stdout.write(`resident now: ${now.anon.toFixed(2)} GiB private (anonymous) + ${now.file.toFixed(2)} GiB file-backed\n`);
  await bundle.release();
}

interface ArmResult {
  readonly prefill: number;
  readonly msPerToken: number;
  readonly loadS: number;
}

/** One fresh load, one prefill of `ctx` positions, `tokens` cached decode steps. */
async function runArm(dir: string, threads: SessionOptions['threads'], ctx: number, tokens: number): Promise<ArmResult> {
  const t0 = performance.now();
  const bundle = await openBundle(dir, { threads });
  const loadS = (performance.now() - t0) / 1000;
  try {
    const graphs = new FromageGraphs(bundle);
    const m = bundle.manifest;
    const prompt = await randomPrompt(graphs, ctx);
    // A short warm-up: first runs allocate the arena.
    await generateTokens(graphs, await randomPrompt(graphs, 8), { numWords: 2, seed: 0, maxPositions: m.model.max_positions, retId: m.tokens.ret, retScaleFactor: 1, minWordTokens: 0, temperature: 0, topP: 1 });
    let prefillMs = 0;
    const steps: number[] = [];
    const start = performance.now();
    let last = start;
    await generateTokens(graphs, prompt, { numWords: tokens, seed: 0, maxPositions: m.model.max_positions, retId: m.tokens.ret, retScaleFactor: 1, minWordTokens: 0, temperature: 0, topP: 1 }, {
      onToken: (ids) => {
        const now = performance.now();
        if (ids.length === 1) prefillMs = now - start;
        else steps.push(now - last);
        last = now;
      },
    });
    return { prefill: ctx / (prefillMs / 1000), msPerToken: median(steps), loadS };
  } finally {
    await bundle.release();
  }
}


/** d: onnxruntime's default thread pool against the count FROMAGE_THREADS=0 picks, alternated. */
async function compareThreads(dir: string, ctx: number, tokens: number, rounds: number): Promise<void> {
  const chosen = resolveThreads(0);
  process.stdout.write(`\nd. threads: onnxruntime's default vs FROMAGE_THREADS=0 -> ${chosen.threads} (${chosen.reason}); context ${ctx}, ${tokens} tokens, ${rounds} round(s), arms alternated\n`);
  const arms: { label: string; threads: SessionOptions['threads']; runs: ArmResult[] }[] = [
    { label: "onnxruntime's default", threads: 'onnxruntime-default', runs: [] },
    { label: `chosen: ${chosen.threads}`, threads: chosen.threads, runs: [] },
  ];
  for (let r = 0; r < rounds; r++) {
    // Alternate which arm goes first, so drift in the machine's load hits both.
    for (const arm of r % 2 === 0 ? arms : [...arms].reverse()) arm.runs.push(await runArm(dir, arm.threads, ctx, tokens));
  }
  process.stdout.write('arm                   | load s | prefill positions/s | decode ms/token (median of runs)\n');
  const summary = arms.map((a) => ({ label: a.label, load: median(a.runs.map((x) => x.loadS)), prefill: median(a.runs.map((x) => x.prefill)), ms: median(a.runs.map((x) => x.msPerToken)) }));
  for (const a of summary) process.stdout.write(`${a.label.padEnd(21)} | ${a.load.toFixed(1).padStart(6)} | ${a.prefill.toFixed(1).padStart(19)} | ${a.ms.toFixed(1)}  (runs: ${arms.find((x) => x.label === a.label)!.runs.map((x) => x.msPerToken.toFixed(0)).join(', ')})\n`);
  const [d, c] = summary;
  process.stdout.write(`chosen vs default: prefill ${(c.prefill / d.prefill).toFixed(2)}x faster, decode ${(d.ms / c.ms).toFixed(2)}x faster\n`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      contexts: { type: 'string' },
      tokens: { type: 'string' },
      vision: { type: 'boolean', default: false },
      keep: { type: 'string' },
      bundle: { type: 'string' },
      'recompute-max': { type: 'string' },
      'threads-compare': { type: 'boolean', default: false },
      rounds: { type: 'string', default: '2' },
    },
  });
  const threads = Number(process.env.FROMAGE_THREADS) || undefined;
  if (values['threads-compare']) {
    const root = values.keep ?? join(tmpdir(), 'fromage-decode-bench');
    const dir = values.bundle ?? (await syntheticBundle(root));
    await compareThreads(dir, Number(values.contexts ?? '256'), Number(values.tokens ?? '16'), Number(values.rounds));
    return;
  }
  if (values.bundle) {
    await benchBundle(values.bundle, (values.contexts ?? '64').split(',').map(Number), Number(values.tokens ?? '16'), threads);
    return;
  }
  const contexts = (values.contexts ?? '64,256,1024,2000').split(',').map(Number);
  const tokens = Number(values.tokens ?? '8');
  const recomputeMax = Number(values['recompute-max'] ?? '1024');
  const root = values.keep ?? (await mkdtemp(join(tmpdir(), 'fromage-decode-bench-')));
  try {
    const t0 = performance.now();
    const bundleDir = await syntheticBundle(root, { largeVision: values.vision });
    process.stdout.write(`bundle (OPT-125m shape${values.vision ? ' + CLIP ViT-L/14 shape' : ''}, fp32) ready in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    const bundle = await openBundle(bundleDir, { threads });
    const graphs = new FromageGraphs(bundle);
    const settings: GenerateSettings = { numWords: tokens, seed: 0, maxPositions: bundle.manifest.model.max_positions, retId: bundle.manifest.tokens.ret, retScaleFactor: 1, minWordTokens: 0, temperature: 0, topP: 1 };
    process.stdout.write(`\na. decode after a prompt of C tokens, ${Math.max(tokens, 32)} cached / ${tokens} recomputed steps (tokens/s = 1 / median step time; prefill excluded)\n`);
    process.stdout.write('context | KV cache ms/token | KV cache tok/s | recompute tok/s | speed-up\n');
    for (const ctx of contexts) {
      const prompt = await randomPrompt(graphs, ctx);
      await generateTokens(graphs, prompt, { ...settings, numWords: 2 });
      // Per-step times (the prefill is one pass in both methods and is not counted); the
      // median resists other load on a shared machine.
      const timed = async (gen: typeof generateTokens, numWords: number): Promise<{ ids: number[]; tps: number }> => {
        const steps: number[] = [];
        let last = 0;
        const out = await gen(graphs, prompt, { ...settings, numWords }, {
          onToken: (ids) => {
            const now = performance.now();
            if (ids.length > 1) steps.push(now - last);
            last = now;
          },
        });
        steps.sort((a, b) => a - b);
        return { ids: out.ids, tps: 1000 / steps[Math.floor(steps.length / 2)] };
      };
      // Cached steps are cheap: time more of them for a steadier median.
      const cached = await timed(generateTokens, Math.max(tokens, 32));
      const cachedTps = cached.tps;
      const head = `${String(ctx).padStart(7)} | ${(1000 / cachedTps).toFixed(1).padStart(16)} | ${cachedTps.toFixed(1).padStart(14)}`;
      if (ctx > recomputeMax) {
        process.stdout.write(`${head} | ${'-'.padStart(15)} | -\n`);
        continue;
      }
      const full = await timed(generateTokensRecompute, tokens);
      const fullTps = full.tps;
      const same = JSON.stringify(cached.ids.slice(0, tokens)) === JSON.stringify(full.ids) ? '' : ' (tokens differ!)';
      process.stdout.write(`${head} | ${fullTps.toFixed(2).padStart(15)} | ${(cachedTps / fullTps).toFixed(1)}x${same}\n`);
    }
    if (values.vision) {
      const S = bundle.manifest.preprocess.crop_size;
      const px = new Float32Array(3 * S * S).map((_, i) => Math.sin(i));
      await graphs.encodeImage(px);
      const runs = 5;
      const v0 = performance.now();
      for (let i = 0; i < runs; i++) await graphs.encodeImage(px);
      process.stdout.write(`\nc. vision graph (CLIP ViT-L/14 shape, ${S}px, fp32): ${((performance.now() - v0) / runs).toFixed(0)} ms/image\n`);
    }
    process.stdout.write(`\nrss ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB, peak RSS ${(process.resourceUsage().maxRSS / 2 ** 10).toFixed(0)} MiB, threads ${resolveThreads(threads).threads}\n`);
    await bundle.release();
  } finally {
    if (!values.keep) await rm(root, { recursive: true, force: true });
  }
}

await main();

/** Linux: resident memory split into private (anonymous) and file-backed pages, in GiB. */
function residentBreakdown(): { anon: number; file: number } | undefined {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    const anon = kib('RssAnon');
    const file = kib('RssFile');
    return Number.isFinite(anon) && Number.isFinite(file) ? { anon: anon / 2 ** 20, file: file / 2 ** 20 } : undefined;
  } catch {
    return undefined;
  }
}

