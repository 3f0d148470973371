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
 *
 * Synthetic sources are written in facebook/opt-* / openai/clip-* / FROMAGe layouts and go
 * through the real converter (convertBundle), so the graphs are the ones users get. Runs on
 * however many cores onnxruntime sees (FROMAGE_THREADS to pin).
 *
 *   npx tsx bench/decode.bench.ts [--contexts 64,256,1024,2000] [--tokens 8] [--recompute-max 1024] [--vision] [--keep DIR]
 *   npx tsx bench/decode.bench.ts --bundle DIR [--contexts 64] [--tokens 16]
 */
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { convertBundle } from '../src/convert/convert.ts';
import { openCheckpoint } from '../src/convert/readers/index.ts';
import { writeTorchZipCheckpoint, type TorchTensorSpec } from '../src/convert/readers/torch-zip-writer.ts';
import { float32ToFloat16Bits } from '../src/convert/quantize.ts';
import { openBundle } from '../src/model/bundle.ts';
import { generateTokens, generateTokensRecompute, type GenerateSettings } from '../src/model/generate.ts';
import { FromageGraphs } from '../src/model/graphs.ts';
import type { AssembledPrompt } from '../src/model/prompt.ts';
import { BYTE_TO_CHAR } from '../src/model/tokenizer/byte-level.ts';
import { assignShards, optTensorSpecs, type OptDims } from './convert-synthetic.ts';
import { xorshift32 } from './xorshift.ts';
import { readFileSync } from 'node:fs';

const FIXTURES = join(import.meta.dirname, '../test/fixtures');
const OPT_125M: OptDims = { hidden: 768, layers: 12, heads: 12, ffn: 3072, vocab: 50272, maxPositions: 2048, maxShardBytes: 1_000_000_000 };
const CLIP_L14 = { hidden: 1024, layers: 24, heads: 16, intermediate: 4096, image: 224, patch: 14 };

/** Deterministic pseudo-normal values (fp16 or fp32 bytes), generated in chunks. */
function* randomBytes(spec: TorchTensorSpec, seed: number, std: number, mean = 0): Generator<Uint8Array> {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const next = xorshift32(seed * 2654435761);
  const CHUNK = 1 << 20;
  for (let at = 0; at < n; at += CHUNK) {
    const m = Math.min(CHUNK, n - at);
    if (spec.dtype === 'float16') {
      const out = new Uint16Array(m);
      for (let i = 0; i < m; i++) out[i] = float32ToFloat16Bits(mean + std * (next() + next() + next() - 1.5) * 2);
      yield new Uint8Array(out.buffer);
    } else {
      const out = new Float32Array(m);
      for (let i = 0; i < m; i++) out[i] = mean + std * (next() + next() + next() - 1.5) * 2;
      yield new Uint8Array(out.buffer);
    }
  }
}

function stdFor(name: string): { std: number; mean: number } {
  if (/norm.*weight|layrnorm.*weight|layer_norm\d?\.weight/.test(name)) return { std: 0.02, mean: 1 };
  if (name.endsWith('.bias')) return { std: 0.01, mean: 0 };
  return { std: 0.02, mean: 0 };
}

async function writeCheckpoint(path: string, specs: readonly TorchTensorSpec[]): Promise<void> {
  const folder = path.split('/').pop()!.replace(/\.[^.]+$/, '');
  await writeTorchZipCheckpoint(path, specs, (spec, i) => {
    const { std, mean } = stdFor(spec.name);
    return randomBytes(spec, i + 7, std, mean);
  }, { folder });
}

/** facebook/opt-*-shaped folder: config, tokenizer files (a synthetic 50265-entry vocabulary), fp16 shards. */
async function writeOpt(dir: string, d: OptDims): Promise<void> {
  await mkdir(dir, { recursive: true });
  const vocab: Record<string, number> = { '<s>': 0, '<pad>': 1, '</s>': 2, '<unk>': 3 };
  let next = 4;
  const order = [...Array(256).keys()].sort((a, b) => (BYTE_TO_CHAR[a].codePointAt(0)! > 255 ? 1 : 0) - (BYTE_TO_CHAR[b].codePointAt(0)! > 255 ? 1 : 0) || a - b);
  for (const b of order) vocab[BYTE_TO_CHAR[b]] = next++;
  for (let i = 0; next < 50265; i++) vocab[`\u0120w${i}`] = next++;
  await writeFile(join(dir, 'vocab.json'), JSON.stringify(vocab));
  await writeFile(join(dir, 'merges.txt'), '#version: 0.2\n');
  await cp(join(FIXTURES, 'facebook/opt-6.7b/tokenizer_config.json'), join(dir, 'tokenizer_config.json'));
  await cp(join(FIXTURES, 'facebook/opt-6.7b/special_tokens_map.json'), join(dir, 'special_tokens_map.json'));
  const config = JSON.parse(await readFile(join(FIXTURES, 'facebook/opt-6.7b/config.json'), 'utf8')) as Record<string, unknown>;
  Object.assign(config, { hidden_size: d.hidden, num_hidden_layers: d.layers, num_attention_heads: d.heads, ffn_dim: d.ffn, vocab_size: d.vocab, max_position_embeddings: d.maxPositions, word_embed_proj_dim: d.hidden });
  await writeFile(join(dir, 'config.json'), JSON.stringify(config));
  const shards = assignShards(optTensorSpecs(d), d.maxShardBytes);
  const names = shards.map((_, i) => `pytorch_model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.bin`);
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < shards.length; i++) {
    for (const s of shards[i]) weightMap[s.name] = names[i];
    await writeCheckpoint(join(dir, names[i]), shards[i]);
  }
  await writeFile(join(dir, 'pytorch_model.bin.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
}

/** openai/clip-*-shaped folder: the fixture's tensor names with ViT-L/14 dimensions (vision tower only). */
async function writeClip(dir: string, large: boolean): Promise<number> {
  await mkdir(dir, { recursive: true });
  const src = join(FIXTURES, 'openai/clip-vit-large-patch14');
  if (!large) {
    await cp(src, dir, { recursive: true });
    return 48;
  }
  const c = CLIP_L14;
  const config = JSON.parse(await readFile(join(src, 'config.json'), 'utf8')) as { vision_config: Record<string, unknown> };
  Object.assign(config.vision_config, { hidden_size: c.hidden, num_hidden_layers: c.layers, num_attention_heads: c.heads, intermediate_size: c.intermediate, image_size: c.image, patch_size: c.patch });
  await writeFile(join(dir, 'config.json'), JSON.stringify(config));
  const pre = JSON.parse(await readFile(join(src, 'preprocessor_config.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(dir, 'preprocessor_config.json'), JSON.stringify({ ...pre, size: c.image, crop_size: c.image }));
  const tiny = await openCheckpoint(join(src, 'model.safetensors'));
  const positions = (c.image / c.patch) ** 2 + 1;
  const specs: TorchTensorSpec[] = [];
  for (const name of tiny.keys()) {
    if (!name.startsWith('vision_model.')) continue;
    const info = tiny.info(name);
    const map = (d: number, i: number): number => (d === 48 ? c.hidden : d === 96 ? c.intermediate : d === 17 ? positions : d === 8 && i >= 2 ? c.patch : d);
    specs.push({ name, dtype: info.dtype === 'int64' ? 'int64' : 'float16', shape: info.shape.map(map) });
  }
  await tiny.close();
  let layer = specs.filter((s) => s.name.includes('encoder.layers.0.'));
  const rest = specs.filter((s) => !s.name.includes('encoder.layers.'));
  for (let l = 0; l < c.layers; l++) rest.push(...layer.map((s) => ({ ...s, name: s.name.replace('layers.0.', `layers.${l}.`) })));
  layer = [];
  const ids = rest.find((s) => s.dtype === 'int64');
  await writeTorchZipCheckpoint(join(dir, 'pytorch_model.bin'), rest, (spec, i) => {
    if (spec === ids) {
      const v = new BigInt64Array(spec.shape.reduce((a, b) => a * b, 1)).map((_, k) => BigInt(k));
      return [new Uint8Array(v.buffer)];
    }
    const { std, mean } = stdFor(spec.name);
    return randomBytes(spec, i + 99, std, mean);
  }, { folder: 'pytorch_model' });
  return c.hidden;
}

async function writeFromage(dir: string, hidden: number, clipHidden: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  const args = JSON.parse(await readFile(join(FIXTURES, 'fromage_model/model_args.json'), 'utf8')) as Record<string, unknown>;
  const E = 256;
  await writeFile(join(dir, 'model_args.json'), JSON.stringify({ ...args, shared_emb_dim: E, n_visual_tokens: 1, retrieval_token_idx: 50266 }));
  const t = (name: string, shape: number[]): TorchTensorSpec => ({ name, dtype: 'float32', shape });
  await writeCheckpoint(join(dir, 'pretrained_ckpt.pth.tar'), [
    t('model.logit_scale', []),
    t('model.visual_embeddings.weight', [hidden, clipHidden]),
    t('model.visual_embeddings.bias', [hidden]),
    t('model.visual_fc.weight', [E, clipHidden]),
    t('model.visual_fc.bias', [E]),
    t('model.text_hidden_fcs.0.0.weight', [E, hidden]),
    t('model.text_hidden_fcs.0.0.bias', [E]),
    t('ret_input_embeddings.weight', [1, hidden]),
  ]);
}

async function buildBundle(root: string, largeVision: boolean): Promise<string> {
  const opt = join(root, 'opt');
  const clip = join(root, 'clip');
  const fromage = join(root, 'fromage');
  // With --keep, sources already written are reused.
  if (!existsSync(join(opt, 'config.json'))) await writeOpt(opt, OPT_125M);
  const clipHidden = await writeClip(clip, largeVision);
  await writeFromage(fromage, OPT_125M.hidden, clipHidden);
  const out = join(root, 'bundle');
  await convertBundle({ optDir: opt, clipDir: clip, fromageDir: fromage, outDir: out, weights: 'fp32', progress: { silent: true } });
  return out;
}

function randomPrompt(graphs: FromageGraphs, length: number): Promise<AssembledPrompt> {
  const ids = Array.from({ length }, (_, i) => 4 + ((i * 7919) % (graphs.vocab - 6)));
  return graphs.embedTokens(ids).then((embeds) => ({ embeds, length, segments: [], textIds: ids, textPositions: ids.map((_, i) => i) }));
}

/** b: prefill and cached decode on a given bundle (no recompute: at 6.7B it would take minutes per token). */
async function benchBundle(dir: string, contexts: number[], tokens: number, threads: number | undefined): Promise<void> {
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
  process.stdout.write(`peak RSS ${(process.resourceUsage().maxRSS / 2 ** 20).toFixed(2)} GiB, threads ${threads ?? 'default'}\n`);
  const now = residentBreakdown();
  // File-backed pages are the mapped weight files: the kernel can drop them under pressure.
  if (now) process.stdout.write(`resident now: ${now.anon.toFixed(2)} GiB private (anonymous) + ${now.file.toFixed(2)} GiB file-backed\n`);
  await bundle.release();
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
    },
  });
  const threads = Number(process.env.FROMAGE_THREADS) || undefined;
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
    const dir = join(root, 'bundle');
    const bundleDir = values.keep && existsSync(join(dir, 'fromage.json')) ? dir : await buildBundle(root, values.vision);
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
    process.stdout.write(`\nrss ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB, peak RSS ${(process.resourceUsage().maxRSS / 2 ** 10).toFixed(0)} MiB, threads ${threads ?? 'default'}\n`);
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

