/**
 * `npm run bench:device -- --bundle DIR [--providers cpu,webgpu] [--prefill 128] [--tokens 32] [--batch 1,4]`
 * `npm run bench:device -- --synthetic WORKDIR [--weights fp32|int8|int4] ...` (an OPT-125m-shaped bundle built there)
 *
 * The decoder graph of a bundle on each execution provider onnxruntime-node offers, measured
 * the way the runtime feeds it today (the KV cache lives in JS memory and is fed whole each
 * step): prefill positions/s, decode ms/token for one sequence, and aggregate tokens/s when
 * several sequences decode in one call. Every provider runs in the same process on the same
 * inputs, and each row prints its ratio to the first provider, so the comparison is made in one
 * run. Inputs are random embeddings: speed depends on shapes, not on the values.
 *
 * This is how the GPU path is checked on a machine that has one: onnxruntime-node ships the
 * WebGPU provider built in (it needs a Vulkan driver on Linux); the CUDA provider needs the
 * NuGet download that `ONNXRUNTIME_NODE_INSTALL=skip` turns off (README, "GPU").
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { syntheticBundle } from './synthetic-bundle.ts';

interface Dims {
  hidden: number;
  layers: number;
  heads: number;
  headDim: number;
}

interface Row {
  provider: string;
  loadMs: number;
  prefillPerS: number;
  decodeMs: number;
  batched: { batch: number; tokensPerS: number }[];
  maxAbsDiff?: number;
}

function randomEmbeds(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 4294967296 - 0.5) * 0.2;
  }
  return out;
}

/** One sequence set decoding: B rows with a shared capacity, appended on the JS side as the runtime does. */
class BenchCache {
  readonly k: Float32Array[];
  readonly v: Float32Array[];
  filled = 0;
  constructor(
    private readonly d: Dims,
    readonly batch: number,
    readonly capacity: number,
  ) {
    const n = batch * d.heads * capacity * d.headDim;
    this.k = Array.from({ length: d.layers }, () => new Float32Array(n));
    this.v = Array.from({ length: d.layers }, () => new Float32Array(n));
  }

  feeds(seq: number): Record<string, ort.Tensor> {
    const { layers, heads, headDim } = this.d;
    // The whole capacity is fed even when empty (masked): the WebGPU provider crashes on
    // zero-sized cache tensors.
    const cap = this.capacity;
    const out: Record<string, ort.Tensor> = {};
    for (let i = 0; i < layers; i++) {
      out[`past_key_values.${i}.key`] = new ort.Tensor('float32', this.k[i], [this.batch, heads, cap, headDim]);
      out[`past_key_values.${i}.value`] = new ort.Tensor('float32', this.v[i], [this.batch, heads, cap, headDim]);
    }
    const mask = new BigInt64Array(this.batch * (cap + seq));
    for (let b = 0; b < this.batch; b++) {
      const row = mask.subarray(b * (cap + seq), (b + 1) * (cap + seq));
      row.fill(1n, 0, this.filled);
      row.fill(1n, cap, cap + seq);
    }
    out.attention_mask = new ort.Tensor('int64', mask, [this.batch, cap + seq]);
    out.position_ids = new ort.Tensor('int64', BigInt64Array.from({ length: this.batch * seq }, (_, i) => BigInt(this.filled + (i % seq))), [this.batch, seq]);
    return out;
  }

  append(out: ort.InferenceSession.OnnxValueMapType, seq: number): void {
    const { layers, heads, headDim } = this.d;
    for (let i = 0; i < layers; i++) {
      for (const [name, dst] of [
        [`new_key_values.${i}.key`, this.k[i]],
        [`new_key_values.${i}.value`, this.v[i]],
      ] as const) {
        const src = out[name].data as Float32Array;
        for (let b = 0; b < this.batch; b++) {
          for (let h = 0; h < heads; h++) {
            const from = ((b * heads + h) * seq) * headDim;
            dst.set(src.subarray(from, from + seq * headDim), ((b * heads + h) * this.capacity + this.filled) * headDim);
          }
        }
      }
    }
    this.filled += seq;
  }
}

async function run(session: ort.InferenceSession, d: Dims, cache: BenchCache, embeds: Float32Array, seq: number): Promise<Float32Array> {
  const feeds = {
    ...cache.feeds(seq),
    inputs_embeds: new ort.Tensor('float32', embeds, [cache.batch, seq, d.hidden]),
    num_logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(1n), []),
  };
  const out = await session.run(feeds);
  cache.append(out, seq);
  return out.logits.data as Float32Array;
}

async function measure(path: string, provider: string, d: Dims, o: { prefill: number; tokens: number; batches: number[] }): Promise<{ row: Row; logits: Float32Array }> {
  const t0 = performance.now();
  process.stdout.write(`${provider}: loading ${path}\n`);
  const session = await ort.InferenceSession.create(path, { executionProviders: [provider], graphOptimizationLevel: 'all' });
  const loadMs = performance.now() - t0;
  const prompt = randomEmbeds(o.prefill * d.hidden, 7);
  const step = randomEmbeds(d.hidden, 11);
  // Warm-up: the first call compiles kernels / allocates.
  await run(session, d, new BenchCache(d, 1, o.prefill + 2), prompt, o.prefill);

  process.stdout.write(`${provider}: loaded in ${loadMs.toFixed(0)} ms, warmed up\n`);
  const cache = new BenchCache(d, 1, o.prefill + o.tokens);
  const tp = performance.now();
  const logits = await run(session, d, cache, prompt, o.prefill);
  const prefillMs = performance.now() - tp;
  const td = performance.now();
  for (let i = 0; i < o.tokens; i++) await run(session, d, cache, step, 1);
  const decodeMs = (performance.now() - td) / o.tokens;

  const batched: Row['batched'] = [];
  for (const b of o.batches) {
    const bc = new BenchCache(d, b, o.prefill + o.tokens);
    const bp = new Float32Array(b * o.prefill * d.hidden);
    for (let r = 0; r < b; r++) bp.set(prompt, r * prompt.length);
    await run(session, d, bc, bp, o.prefill);
    const bs = new Float32Array(b * d.hidden);
    for (let r = 0; r < b; r++) bs.set(step, r * d.hidden);
    const tb = performance.now();
    for (let i = 0; i < o.tokens; i++) await run(session, d, bc, bs, 1);
    batched.push({ batch: b, tokensPerS: (b * o.tokens * 1000) / (performance.now() - tb) });
  }
  await session.release();
  return { row: { provider, loadMs, prefillPerS: (o.prefill * 1000) / prefillMs, decodeMs, batched }, logits: Float32Array.from(logits) };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      bundle: { type: 'string' },
      synthetic: { type: 'string' },
      weights: { type: 'string', default: 'fp32' },
      providers: { type: 'string', default: 'cpu,webgpu' },
      prefill: { type: 'string', default: '128' },
      tokens: { type: 'string', default: '32' },
      batch: { type: 'string', default: '1,4' },
    },
  });
  if (values.synthetic) values.bundle = await syntheticBundle(values.synthetic, { weights: values.weights as 'fp32' | 'int8' | 'int4' });
  if (!values.bundle) {
    process.stderr.write('usage: npm run bench:device -- (--bundle DIR | --synthetic WORKDIR [--weights fp32|int8|int4]) [--providers cpu,webgpu] [--prefill 128] [--tokens 32] [--batch 1,4]\n');
    process.exit(2);
  }
  const manifest = JSON.parse(await readFile(join(values.bundle, 'fromage.json'), 'utf8')) as { model: { hidden_size: number; num_layers: number; num_heads: number; head_dim: number }; weights?: unknown };
  const m = manifest.model;
  const d: Dims = { hidden: m.hidden_size, layers: m.num_layers, heads: m.num_heads, headDim: m.head_dim };
  const o = { prefill: Number(values.prefill), tokens: Number(values.tokens), batches: values.batch.split(',').map(Number) };
  const rows: Row[] = [];
  let reference: Float32Array | undefined;
  for (const provider of values.providers.split(',')) {
    try {
      const { row, logits } = await measure(join(values.bundle, 'decoder.onnx'), provider, d, o);
      if (reference) row.maxAbsDiff = logits.reduce((mx, x, i) => Math.max(mx, Math.abs(x - reference![i])), 0);
      else reference = logits;
      rows.push(row);
      process.stdout.write(`${provider}: measured ${JSON.stringify(row)}\n`);
    } catch (err) {
      process.stdout.write(`${provider}: could not run (${(err as Error).message.split('\n')[0]})\n`);
    }
  }
  const base = rows[0];
  process.stdout.write(`\nbench:device  ${values.bundle}: ${d.layers} layers, hidden ${d.hidden}; prefill ${o.prefill}, ${o.tokens} decode steps\n`);
  process.stdout.write('provider   load ms   prefill pos/s   decode ms/token   ' + o.batches.map((b) => `B=${b} tok/s`).join('   ') + '   logits max|diff| vs first\n');
  for (const r of rows) {
    const ratio = (x: number, y: number) => (base && r !== base ? ` (${(x / y).toFixed(2)}x)` : '');
    process.stdout.write(
      `${r.provider.padEnd(9)}  ${r.loadMs.toFixed(0).padStart(7)}   ${(r.prefillPerS.toFixed(1) + ratio(r.prefillPerS, base.prefillPerS)).padStart(13)}   ${(r.decodeMs.toFixed(2) + ratio(base.decodeMs, r.decodeMs)).padStart(15)}   ` +
        r.batched.map((b, i) => (b.tokensPerS.toFixed(1) + ratio(b.tokensPerS, base.batched[i].tokensPerS)).padStart(10)).join('   ') +
        `   ${r.maxAbsDiff === undefined ? '-' : r.maxAbsDiff.toExponential(2)}\n`,
    );
  }
}

await main();
