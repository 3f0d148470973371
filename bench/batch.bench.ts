/**
 * `npx tsx bench/batch.bench.ts`: what batched decoding (src/serving) buys per decoder step.
 *
 * For each batch size B, B prompts of --context positions are prefilled (not timed), joined to a
 * SlotPool, and --tokens decoder steps are timed for all rows at once; against it, in the same
 * round, B single-sequence generations (src/model's KvCache path, exact preallocation) decode
 * the same number of tokens one after the other. Printed: ms per step, aggregate tokens/s of
 * each side and the ratio, and the cost of joining a prefilled prompt to the pool (the one copy
 * per job the batcher adds), and how far each row's logits are from the same prompt decoded
 * alone (both arms decode the same prompts), and prefill speed in the batcher's chunks
 * (BATCH_PREFILL_CHUNK) against src/model's (a chunk is how long answering rows wait). Each
 * arm gets one untimed warm-up step; which arm runs first alternates over --rounds; the fastest
 * and the median step over all rounds are printed (on a shared machine the fastest is the
 * least disturbed estimate of a step's cost).
 *
 * Default bundle: the random-weight OPT-125m-shaped int4 one bench:serve builds (and reuses)
 * under /tmp/fromage-serve-bench; --bundle DIR for another (e.g. the OPT-6.7B-shaped int4 one
 * `npm run bench:convert -- --shape opt-6.7b --clip tiny --keep` leaves).
 *
 *   npx tsx bench/batch.bench.ts [--bundle DIR] [--batches 1,2,4,8] [--context 64] [--tokens 16] [--rounds 3] [--prefill 512]
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openBundle } from '../src/model/bundle.ts';
import { DEFAULT_PREFILL_CHUNK, FromageGraphs } from '../src/model/graphs.ts';
import type { KvCache } from '../src/model/kv-cache.ts';
import { resolveThreads } from '../src/model/threads.ts';
import { BATCH_PREFILL_CHUNK } from '../src/serving/batcher.ts';
import { SlotPool } from '../src/serving/slot-pool.ts';
import { syntheticBundle } from './synthetic-bundle.ts';
import { xorshift32 } from './xorshift.ts';

const out = (s: string): boolean => process.stdout.write(s);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const min = (xs: number[]): number => Math.min(...xs);

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      bundle: { type: 'string' },
      batches: { type: 'string', default: '1,2,4,8' },
      context: { type: 'string', default: '64' },
      tokens: { type: 'string', default: '16' },
      rounds: { type: 'string', default: '3' },
      prefill: { type: 'string', default: '512' },
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
        (batched[b] ??= []).push(...steps);
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
        (single[b] ??= []).push(...steps);
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
  out(`bench:batch  ${bundleDir} (${m.num_layers} layers x ${m.hidden_size}, ${bundle.manifest.weights.dtype}), threads ${threads}, context ${context}, ${tokens} steps, ${values.rounds} rounds\n`);
  // Other jobs on a shared machine slow single steps by up to several times, unevenly: the
  // fastest step of each arm is the least disturbed estimate of its cost, the median the typical.
  out('rows | batched ms/step (fastest, median) | batched tokens/s (fastest) | one at a time ms/token (fastest, median) | one at a time tokens/s (fastest) | ratio\n');
  for (const b of batches) {
    const [step, stepMed] = [min(batched[b]), median(batched[b])];
    const [one, oneMed] = [min(single[b]), median(single[b])];
    const tb = (1000 * b) / step;
    const ts = 1000 / one;
    out(`${String(b).padStart(4)} | ${`${step.toFixed(1)}, ${stepMed.toFixed(1)}`.padStart(35)} | ${tb.toFixed(1).padStart(26)} | ${`${one.toFixed(1)}, ${oneMed.toFixed(1)}`.padStart(40)} | ${ts.toFixed(1).padStart(32)} | ${(tb / ts).toFixed(2)}x\n`);
  }
  out(`exactness: each row's first logits batched vs the same prompt alone: max abs diff ${maxDiff.toExponential(2)}, greedy token equal in ${argmaxSame}/${compared} rows\n`);
  // Prefill chunk size: the batcher's (BATCH_PREFILL_CHUNK) against src/model's default.
  const prefillIds = [2, ...Array.from({ length: Number(values.prefill) - 1 }, () => 4 + Math.floor(rand() * 50000))];
  const prefillRates: Record<number, number[]> = {};
  for (let round = 0; round < Number(values.rounds); round++) {
    const chunks = round % 2 === 0 ? [DEFAULT_PREFILL_CHUNK, BATCH_PREFILL_CHUNK] : [BATCH_PREFILL_CHUNK, DEFAULT_PREFILL_CHUNK];
    for (const chunk of chunks) {
      const g = new FromageGraphs(bundle, { prefillChunk: chunk });
      const cache = g.emptyCache();
      cache.preallocate(prefillIds.length);
      const embeds = await g.embedTokens(prefillIds);
      const t0 = performance.now();
      await g.decode(embeds, cache, 1);
      (prefillRates[chunk] ??= []).push((1000 * prefillIds.length) / (performance.now() - t0));
    }
  }
  const [big, small] = [median(prefillRates[DEFAULT_PREFILL_CHUNK]), median(prefillRates[BATCH_PREFILL_CHUNK])];
  const chunkMs = (chunk: number, rate: number): string => ((1000 * Math.min(chunk, prefillIds.length)) / rate).toFixed(0);
  out(
    `prefill of ${prefillIds.length} positions: chunks of ${DEFAULT_PREFILL_CHUNK} ${big.toFixed(1)} positions/s (${chunkMs(DEFAULT_PREFILL_CHUNK, big)} ms per chunk), ` +
      `chunks of ${BATCH_PREFILL_CHUNK} ${small.toFixed(1)} positions/s (${chunkMs(BATCH_PREFILL_CHUNK, small)} ms per chunk): ${(small / big).toFixed(2)}x\n`,
  );
  out(`joining a prefilled ${context}-position prompt to the pool (copy, growth included): median ${median(joins).toFixed(2)} ms\n`);
  await bundle.release();
}

await main();
