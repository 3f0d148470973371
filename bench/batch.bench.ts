/**
 * `npx tsx bench/batch.bench.ts`: what batched decoding (src/serving) buys per decoder step.
 *
 * For each batch size B, B prompts of --context positions are prefilled (not timed), joined to a
 * SlotPool, and --tokens decoder steps are timed for all rows at once; against it, in the same
 * round, B single-sequence generations (src/model's KvCache path, exact preallocation) decode
 * the same number of tokens one after the other. Printed: ms per step, aggregate tokens/s of
 * each side and the ratio, and the cost of joining a prefilled prompt to the pool (the one copy
 * per job the batcher adds), and how far each row's logits are from the same prompt decoded
 * alone (both arms decode the same prompts). Each arm gets one untimed warm-up step and reports its median
 * step (a busy machine makes single steps slow); which arm runs first alternates over --rounds;
 * the median over rounds is printed.
 *
 * Default bundle: the random-weight OPT-125m-shaped int4 one bench:serve builds (and reuses)
 * under /tmp/fromage-serve-bench; --bundle DIR for another (e.g. the OPT-6.7B-shaped int4 one
 * `npm run bench:convert -- --shape opt-6.7b --clip tiny --keep` leaves).
 *
 *   npx tsx bench/batch.bench.ts [--bundle DIR] [--batches 1,2,4,8] [--context 64] [--tokens 16] [--rounds 3]
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openBundle } from '../src/model/bundle.ts';
import { FromageGraphs } from '../src/model/graphs.ts';
import type { KvCache } from '../src/model/kv-cache.ts';
import { resolveThreads } from '../src/model/threads.ts';
import { SlotPool } from '../src/serving/slot-pool.ts';
import { syntheticBundle } from './synthetic-bundle.ts';
import { xorshift32 } from './xorshift.ts';

const out = (s: string): boolean => process.stdout.write(s);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      bundle: { type: 'string' },
      batches: { type: 'string', default: '1,2,4,8' },
      context: { type: 'string', default: '64' },
      tokens: { type: 'string', default: '16' },
      rounds: { type: 'string', default: '3' },
    },
  });
  const bundleDir = values.bundle ?? (await syntheticBundle(join(tmpdir(), 'fromage-serve-bench'), { weights: 'int4' }));
  const threads = resolveThreads(Number(process.env.FROMAGE_THREADS) || 0).threads;
  const bundle = await openBundle(bundleDir, { threads });
  const graphs = new FromageGraphs(bundle);
  const m = bundle.manifest.model;
  const context = Number(values.context);
  const tokens = Number(values.tokens);
  const batches = values.batches.split(',').map(Number);
  const rand = xorshift32(7);
  const promptIds = (): number[] => [2, ...Array.from({ length: context - 1 }, () => 4 + Math.floor(rand() * 50000))];

  const prefill = async (ids: readonly number[], extra: number): Promise<KvCache> => {
    const cache = graphs.emptyCache();
    cache.preallocate(context + extra);
    await graphs.decode(await graphs.embedTokens(ids), cache, 1);
    return cache;
  };
  const V = m.vocab_size;
  // Exactness on this bundle: each row's first batched logits against the same prompt alone.
  let maxDiff = 0;
  let argmaxSame = 0;
  let compared = 0;
  const argmax = (a: Float32Array): number => a.reduce((best, v, i) => (v > a[best] ? i : best), 0);
  const token = await graphs.embedTokens([1000]);

  const batched: Record<number, number[]> = {};
  const single: Record<number, number[]> = {};
  const joins: number[] = [];
  for (let round = 0; round < Number(values.rounds); round++) {
    for (const b of batches) {
      const prompts = Array.from({ length: b }, promptIds);
      let batchedFirst: Float32Array | undefined;
      const aloneFirst: Float32Array[] = [];
      const runBatched = async (): Promise<void> => {
        // Batched: b rows, `tokens` steps for all of them (plus one untimed warm-up step).
        const pool = new SlotPool({ layers: m.num_layers, heads: m.num_heads, headDim: m.head_dim, maxPositions: m.max_positions }, b);
        for (let r = 0; r < b; r++) {
          const c = await prefill(prompts[r], 0);
          const t0 = performance.now();
          pool.join(c, tokens + 1);
          joins.push(performance.now() - t0);
        }
        const embeds = new Float32Array(b * m.hidden_size);
        for (let r = 0; r < b; r++) embeds.set(token, r * m.hidden_size);
        batchedFirst = (await graphs.decodeStep(embeds, pool)).logits;
        const steps: number[] = [];
        for (let s = 0; s < tokens; s++) {
          const t0 = performance.now();
          await graphs.decodeStep(embeds, pool);
          steps.push(performance.now() - t0);
        }
        (batched[b] ??= []).push(median(steps));
      };
      const runSingle = async (): Promise<void> => {
        // One at a time: b sequences, `tokens` steps each, through the single-sequence cache.
        const caches: KvCache[] = [];
        for (let r = 0; r < b; r++) caches.push(await prefill(prompts[r], tokens + 1));
        aloneFirst.push((await graphs.decode(token, caches[0], 1)).logits);
        const steps: number[] = [];
        for (const [i, c] of caches.entries()) {
          for (let s = 0; s < tokens - (i === 0 ? 1 : 0); s++) {
            const t0 = performance.now();
            const out = await graphs.decode(token, c, 1);
            steps.push(performance.now() - t0);
            if (s === 0 && i > 0) aloneFirst.push(out.logits);
          }
        }
        (single[b] ??= []).push(median(steps));
      };
      // The arm that runs first after the prefills is slower on a busy machine: alternate.
      if (round % 2 === 0) {
        await runBatched();
        await runSingle();
      } else {
        await runSingle();
        await runBatched();
      }
      aloneFirst.forEach((alone, r) => {
        const row = batchedFirst!.subarray(r * V, (r + 1) * V);
        for (let i = 0; i < V; i++) maxDiff = Math.max(maxDiff, Math.abs(row[i] - alone[i]));
        if (argmax(row) === argmax(alone)) argmaxSame++;
        compared++;
      });
    }
  }
  out(`bench:batch  ${bundleDir} (${m.num_layers} layers x ${m.hidden_size}, ${bundle.manifest.weights.dtype}), threads ${threads}, context ${context}, ${tokens} steps, median step of each arm, median of ${values.rounds} rounds\n`);
  out('rows | batched ms/step | batched tokens/s | one at a time ms/token | one at a time tokens/s | batched / one at a time\n');
  for (const b of batches) {
    const step = median(batched[b]);
    const one = median(single[b]);
    const tb = (1000 * b) / step;
    const ts = 1000 / one;
    out(`${String(b).padStart(4)} | ${step.toFixed(1).padStart(15)} | ${tb.toFixed(1).padStart(16)} | ${one.toFixed(1).padStart(22)} | ${ts.toFixed(1).padStart(22)} | ${(tb / ts).toFixed(2)}x\n`);
  }
  out(`exactness: each row's first logits batched vs the same prompt alone: max abs diff ${maxDiff.toExponential(2)}, greedy token equal in ${argmaxSame}/${compared} rows\n`);
  out(`joining a prefilled ${context}-position prompt to the pool (copy, growth included): median ${median(joins).toFixed(2)} ms\n`);
  await bundle.release();
}

await main();
