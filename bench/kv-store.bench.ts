/**
 * `npm run bench:kv`: what keeping a conversation's KV cache costs against the prefill it saves,
 * per storage codec (src/serving/kv-codec.ts), at the OPT-6.7B shape (32 layers, 32 heads,
 * head_dim 128: 1 MiB of float32 keys/values per position).
 *
 * For fp32 (a plain copy), fp16 and int8, in one run on the same synthetic cache (normally
 * distributed values, a few outlier lanes as real keys have):
 *  - keep: encoding a finished answer's cache into the store (PrefixStore.insert);
 *  - reuse: copying a kept prefix back into a live cache (match + copyInto), the part a new
 *    turn waits for;
 *  - disk: spilling the entry (write, crc32) and reading it back (read, crc32 check; a page-cache
 *    read unless the machine is short of memory);
 *  - the error of the stored values;
 * each per position, against the prefill of one position: with --bundle DIR measured in this
 * run on that bundle (its shape is then used throughout), else --prefill-ms (default 70: 14.3
 * positions/s measured for the OPT-6.7B-shaped int4 bundle on the 2-core machine, issue 12).
 *
 * With --bundle, also the codecs' effect on the model: a random prompt's first positions are
 * prefilled, their cache kept in each codec and restored, then the next positions decoded
 * from it; logits are compared with the exact (fp32) restore.
 *
 *   npx tsx bench/kv-store.bench.ts [--positions 256] [--shape opt-6.7b|opt-125m] [--prefill-ms 70] [--rounds 3]
 *   npx tsx bench/kv-store.bench.ts --bundle .tmp/bench-convert/opt-6.7b/bundle-int4 [--prefill-positions 32] [--next 8]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openBundle } from '../src/model/bundle.ts';
import { FromageGraphs, type KvCache } from '../src/model/graphs.ts';
import { bodyOf, decodeKvInto, encodedBytes, encodeKv, KV_CODECS, type KvCodecName } from '../src/serving/kv-codec.ts';
import { KvSpill } from '../src/serving/kv-spill.ts';
import type { KvReader, KvShape } from '../src/serving/kv-types.ts';
import { createKvStore } from '../src/serving/prefix-store.ts';
import { ArrayKv } from '../test/serving/kv-fakes.ts';
import { xorshift32 } from './xorshift.ts';

const SHAPES: Record<string, KvShape> = {
  'opt-6.7b': { layers: 32, heads: 32, headDim: 128 },
  'opt-125m': { layers: 12, heads: 12, headDim: 64 },
};

const { values: args } = parseArgs({
  options: {
    positions: { type: 'string', default: '256' },
    shape: { type: 'string', default: 'opt-6.7b' },
    'prefill-ms': { type: 'string', default: '70' },
    rounds: { type: 'string', default: '5' },
    bundle: { type: 'string' },
    'prefill-positions': { type: 'string', default: '32' },
    next: { type: 'string', default: '8' },
  },
});

const positions = Number(args.positions);
let shape = SHAPES[args.shape];
if (!shape) throw new Error(`--shape must be one of ${Object.keys(SHAPES).join(', ')}`);
let prefillMs = Number(args['prefill-ms']);
let prefillSource = `${prefillMs} ms (--prefill-ms: the issue's 14.3 positions/s on the OPT-6.7B-shaped int4 bundle)`;
const rounds = Number(args.rounds);
const MIB = 1024 * 1024;
/** Positions a next turn adds (question + answer), for the cost of keeping it after a kept turn. */
const NEXT_TURN = 32;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function time(fn: () => Promise<void> | void): Promise<number> {
  const t0 = performance.now();
  return Promise.resolve(fn()).then(() => performance.now() - t0);
}

/** A live cache of normal(0, 1) values (Box-Muller), every 16th lane scaled x8 like key outliers. */
function syntheticCache(): ArrayKv {
  const kv = new ArrayKv(shape, positions + NEXT_TURN);
  const rand = xorshift32(12345);
  for (const buf of kv.buffers) {
    for (let i = 0; i < buf.length; i += 2) {
      const r = Math.sqrt(-2 * Math.log(rand() + 1e-12));
      const t = 2 * Math.PI * rand();
      buf[i] = r * Math.cos(t) * (i % 16 === 0 ? 8 : 1);
      buf[i + 1] = r * Math.sin(t);
    }
  }
  kv.length = positions + NEXT_TURN;
  return kv;
}

function errors(live: ArrayKv, out: ArrayKv): { maxAbs: number; relRms: number } {
  let maxAbs = 0;
  let se = 0;
  let sv = 0;
  for (let j = 0; j < 2 * shape.layers; j++) {
    for (let h = 0; h < shape.heads; h++) {
      const a = live.read(j, h, 0, positions);
      const b = out.read(j, h, 0, positions);
      for (let i = 0; i < a.length; i++) {
        const d = a[i] - b[i];
        maxAbs = Math.max(maxAbs, Math.abs(d));
        se += d * d;
        sv += a[i] * a[i];
      }
    }
  }
  return { maxAbs, relRms: Math.sqrt(se / sv) };
}

interface Row {
  codec: KvCodecName;
  keepMs: number;
  /** Whole milliseconds to keep the next turn (NEXT_TURN more positions) after this one was kept. */
  keepNextMs: number;
  reuseMs: number;
  writeMs: number;
  readMs: number;
  bytes: number;
  maxAbs: number;
  relRms: number;
}

async function measure(codec: KvCodecName, live: ArrayKv, keys: number[], dir: string): Promise<Row> {
  const keep: number[] = [];
  const keepNext: number[] = [];
  const reuse: number[] = [];
  const write: number[] = [];
  const read: number[] = [];
  let out = new ArrayKv(shape, positions);
  // Round 0 warms the JIT up and is not counted.
  for (let r = -1; r < rounds; r++) {
    const store = createKvStore({ budgetBytes: 64 * 1024 * MIB, codec });
    keep.push(await time(() => store.insert(keys, live)));
    const next = Array.from({ length: positions + NEXT_TURN }, (_, i) => 4 + i);
    keepNext.push(await time(() => store.insert(next, live)));
    out = new ArrayKv(shape, positions);
    reuse.push(
      await time(async () => {
        const m = await store.match(keys, positions);
        await m!.copyInto(out);
      }),
    );
    await store.close();
    const spill = await KvSpill.open({ dir: join(dir, `${codec}-${r}`), budgetBytes: 64 * 1024 * MIB, bundleId: 'bench' });
    const kv = encodeKv(live, positions, codec);
    write.push(
      await time(async () => {
        if (!(await spill.write(keys, bodyOf([kv]), Date.now()))) throw new Error('spill write failed');
      }),
    );
    const found = spill.best(keys, positions);
    read.push(
      await time(async () => {
        if (!(await spill.read(found!.entry))) throw new Error('spill read failed');
      }),
    );
  }
  return {
    codec,
    keepMs: median(keep.slice(1)) / positions,
    keepNextMs: median(keepNext.slice(1)),
    reuseMs: median(reuse.slice(1)) / positions,
    writeMs: median(write.slice(1)) / positions,
    readMs: median(read.slice(1)) / positions,
    bytes: encodedBytes(shape, 1, codec),
    ...errors(live, out),
  };
}

/** A reader over a KvCache's buffers, through its decoder feeds ([1, heads, capacity, headDim] each). */
function cacheReader(cache: KvCache, kvShape: KvShape): KvReader {
  const feeds = cache.feeds();
  const data = Array.from({ length: 2 * kvShape.layers }, (_, j) => feeds[`past_key_values.${j >> 1}.${j % 2 === 0 ? 'key' : 'value'}`]);
  return {
    shape: kvShape,
    length: cache.length,
    read: (j, h, from, to) => {
      const t = data[j];
      const cap = t.dims[2];
      return (t.data as Float32Array).subarray((h * cap + from) * kvShape.headDim, (h * cap + to) * kvShape.headDim);
    },
  };
}

interface ModelCheck {
  codec: KvCodecName;
  maxLogitDiff: number;
  argmaxAgree: number;
}

/** Prefill timing on a real bundle, then the codecs' effect on the next positions' logits. */
async function benchBundle(dir: string): Promise<ModelCheck[]> {
  const bundle = await openBundle(dir);
  try {
    const m = bundle.manifest.model;
    shape = { layers: m.num_layers, heads: m.num_heads, headDim: m.head_dim };
    const graphs = new FromageGraphs(bundle);
    const P = Number(args['prefill-positions']);
    const K = Number(args.next);
    const rand = xorshift32(7);
    const ids = Array.from({ length: P + K }, () => 4 + Math.floor(rand() * (graphs.vocab - 10)));
    const embeds = await graphs.embedTokens(ids);
    const H = graphs.hidden;
    await graphs.decode(embeds.subarray(0, 4 * H), graphs.emptyCache()); // warm-up
    const cache = graphs.emptyCache();
    const t0 = performance.now();
    await graphs.decode(embeds.subarray(0, P * H), cache);
    prefillMs = (performance.now() - t0) / P;
    prefillSource = `${prefillMs.toFixed(1)} ms, measured in this run: ${P} positions of ${dir} in one call (${(1000 / prefillMs).toFixed(1)} positions/s)`;
    const reader = cacheReader(cache, shape);
    const results: { codec: KvCodecName; logits: Float32Array }[] = [];
    for (const codec of KV_CODECS) {
      const restored = new ArrayKv(shape, P);
      decodeKvInto(encodeKv(reader, P, codec), restored);
      const next = graphs.emptyCache();
      next.append(restored.buffers, P);
      const out = await graphs.decode(embeds.subarray(P * H, (P + K) * H), next, K);
      results.push({ codec, logits: out.logits });
    }
    const exact = results[0].logits;
    const V = graphs.vocab;
    const argmax = (x: Float32Array, row: number) => {
      let best = 0;
      for (let i = 1; i < V; i++) if (x[row * V + i] > x[row * V + best]) best = i;
      return best;
    };
    return results.map(({ codec, logits }) => {
      let maxLogitDiff = 0;
      for (let i = 0; i < logits.length; i++) maxLogitDiff = Math.max(maxLogitDiff, Math.abs(logits[i] - exact[i]));
      let argmaxAgree = 0;
      for (let r = 0; r < K; r++) if (argmax(logits, r) === argmax(exact, r)) argmaxAgree++;
      return { codec, maxLogitDiff, argmaxAgree };
    });
  } finally {
    await bundle.release();
  }
}

async function main(): Promise<void> {
  const checks = args.bundle ? await benchBundle(args.bundle) : [];
  const dir = await mkdtemp(join(tmpdir(), 'fromage-kv-bench-'));
  try {
    console.log(`bench:kv  shape ${args.bundle ?? args.shape} (${shape.layers} layers, ${shape.heads} heads, head_dim ${shape.headDim}), ${positions} positions, median of ${rounds}`);
    console.log(`prefill saved per reused position: ${prefillSource}\n`);
    const live = syntheticCache();
    const keys = Array.from({ length: positions }, (_, i) => 4 + i);
    const rows: Row[] = [];
    for (const codec of KV_CODECS) rows.push(await measure(codec, live, keys, dir));
    const f = (x: number, d = 3) => x.toFixed(d);
    console.log(`keep: encoding a whole ${positions}-position cache; keep next turn: ${NEXT_TURN} positions more once it is kept (ms in all)`);
    console.log('| codec | KiB/position | positions per GiB | keep ms/pos | keep next turn ms | reuse ms/pos | prefill / reuse | spill write ms/pos | spill read ms/pos | prefill / (read + reuse) | max abs err | rel RMS err |');
    console.log('|---|---|---|---|---|---|---|---|---|---|---|---|');
    for (const r of rows) {
      console.log(
        `| ${r.codec} | ${r.bytes / 1024} | ${Math.floor((1024 * MIB) / r.bytes)} | ${f(r.keepMs)} | ${f(r.keepNextMs, 1)} | ${f(r.reuseMs)} | ${Math.round(prefillMs / r.reuseMs)}x | ` +
          `${f(r.writeMs)} | ${f(r.readMs)} | ${Math.round(prefillMs / (r.readMs + r.reuseMs))}x | ${r.maxAbs.toExponential(2)} | ${r.relRms.toExponential(2)} |`,
      );
    }
    const fp32 = rows.find((r) => r.codec === 'fp32')!;
    for (const r of rows.filter((x) => x.codec !== 'fp32')) {
      console.log(
        `\n${r.codec} vs fp32: ${f(fp32.bytes / r.bytes, 1)}x the conversations per MiB; reuse ${f(r.reuseMs / fp32.reuseMs, 2)}x fp32's time ` +
          `(${f((100 * r.reuseMs) / prefillMs, 2)}% of the prefill it saves, fp32 ${f((100 * fp32.reuseMs) / prefillMs, 2)}%); keep ${f(r.keepMs / fp32.keepMs, 2)}x`,
      );
    }
    if (checks.length) {
      console.log(`\nmodel check: ${args['prefill-positions']} positions prefilled, kept and restored, then the next ${args.next} decoded from them (logits against the fp32 restore, which is exact)`);
      console.log('| codec | max |logit diff| | greedy argmax agreeing |');
      console.log('|---|---|---|');
      for (const c of checks) console.log(`| ${c.codec} | ${c.maxLogitDiff.toExponential(2)} | ${c.argmaxAgree}/${args.next} |`);
    }
    console.log(`\nthis process: peak RSS ${Math.round(process.resourceUsage().maxRSS / 1024)} MiB`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
