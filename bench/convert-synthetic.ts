/**
 * Synthetic OPT-shaped checkpoints for the conversion benchmark: random fp16 weights in
 * facebook/opt-*'s on-disk layout (sharded torch zip `pytorch_model-0000i-of-0000n.bin`,
 * `pytorch_model.bin.index.json`, `config.json`), streamed to disk so even the 13 GB
 * OPT-6.7B shape is written with a few MB of memory.
 *
 * Standalone: `tsx bench/convert-synthetic.ts --shape opt-1.3b --out DIR`.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { float32ToFloat16Bits } from '../src/convert/quantize.ts';
import { writeTorchZipCheckpoint, type TorchTensorSpec } from '../src/convert/readers/torch-zip-writer.ts';
import { xorshift32 } from './xorshift.ts';

export type SyntheticShape = 'tiny' | 'opt-1.3b' | 'opt-6.7b';

export interface OptDims {
  readonly hidden: number;
  readonly layers: number;
  readonly heads: number;
  readonly ffn: number;
  readonly vocab: number;
  readonly maxPositions: number;
  /** Default shard size limit (HF's save_pretrained max_shard_size). */
  readonly maxShardBytes: number;
}

export const OPT_SHAPES: Readonly<Record<SyntheticShape, OptDims>> = {
  // Same dims as the test fixture's tiny OPT; for tests of this writer.
  tiny: { hidden: 64, layers: 2, heads: 4, ffn: 256, vocab: 300, maxPositions: 128, maxShardBytes: 100_000 },
  'opt-1.3b': { hidden: 2048, layers: 24, heads: 32, ffn: 8192, vocab: 50272, maxPositions: 2048, maxShardBytes: 1_000_000_000 },
  // facebook/opt-6.7b itself ships two shards of <= 10 GB.
  'opt-6.7b': { hidden: 4096, layers: 32, heads: 32, ffn: 16384, vocab: 50272, maxPositions: 2048, maxShardBytes: 10_000_000_000 },
};

export interface SyntheticCheckpointOptions {
  dir: string;
  shape: SyntheticShape;
  maxShardBytes?: number;
  seed?: number;
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

export interface SyntheticCheckpoint {
  readonly dir: string;
  readonly shards: string[];
  readonly indexFile: string;
  readonly configFile: string;
  readonly tensorCount: number;
  readonly totalBytes: number;
  readonly dims: OptDims;
}

type Init = 'weight' | 'bias' | 'norm';

interface SyntheticTensor extends TorchTensorSpec {
  readonly init: Init;
}

/** facebook/opt-* state dict (OPTModel: `decoder.*`, lm_head tied, absent), in HF's key order. */
export function optTensorSpecs(d: OptDims): SyntheticTensor[] {
  const t = (name: string, shape: number[], init: Init): SyntheticTensor => ({ name, dtype: 'float16', shape, init });
  const specs: SyntheticTensor[] = [
    t('decoder.embed_tokens.weight', [d.vocab, d.hidden], 'weight'),
    t('decoder.embed_positions.weight', [d.maxPositions + 2, d.hidden], 'weight'),
    t('decoder.final_layer_norm.weight', [d.hidden], 'norm'),
    t('decoder.final_layer_norm.bias', [d.hidden], 'bias'),
  ];
  for (let i = 0; i < d.layers; i++) {
    const p = `decoder.layers.${i}.`;
    for (const proj of ['k_proj', 'v_proj', 'q_proj', 'out_proj']) {
      specs.push(t(`${p}self_attn.${proj}.weight`, [d.hidden, d.hidden], 'weight'), t(`${p}self_attn.${proj}.bias`, [d.hidden], 'bias'));
    }
    specs.push(
      t(`${p}self_attn_layer_norm.weight`, [d.hidden], 'norm'),
      t(`${p}self_attn_layer_norm.bias`, [d.hidden], 'bias'),
      t(`${p}fc1.weight`, [d.ffn, d.hidden], 'weight'),
      t(`${p}fc1.bias`, [d.ffn], 'bias'),
      t(`${p}fc2.weight`, [d.hidden, d.ffn], 'weight'),
      t(`${p}fc2.bias`, [d.hidden], 'bias'),
      t(`${p}final_layer_norm.weight`, [d.hidden], 'norm'),
      t(`${p}final_layer_norm.bias`, [d.hidden], 'bias'),
    );
  }
  return specs;
}

function bytesOf(spec: TorchTensorSpec): number {
  return spec.shape.reduce((a, b) => a * b, 1) * 2;
}

/** HF's greedy sharding: a tensor starts a new shard when it would overflow the current one. */
export function assignShards<T extends TorchTensorSpec>(specs: readonly T[], maxShardBytes: number): T[][] {
  const shards: T[][] = [[]];
  let size = 0;
  for (const s of specs) {
    const b = bytesOf(s);
    if (size > 0 && size + b > maxShardBytes) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1].push(s);
    size += b;
  }
  return shards;
}

/**
 * Random fp16 values are drawn once into a pool (8 MB per init kind) and tensors stream
 * windows of it from seeded offsets: realistic value distributions at disk speed.
 */
const POOL_VALUES = 1 << 22;

function makePool(init: Init, seed: number): Uint8Array {
  const uniform = xorshift32(seed);
  const [mean, std] = init === 'weight' ? [0, 0.02] : init === 'bias' ? [0, 0.01] : [1, 0.05];
  const pool = new Uint16Array(POOL_VALUES);
  for (let i = 0; i < POOL_VALUES; i++) {
    // Irwin-Hall(4): close enough to normal for weights, cheap and deterministic.
    const z = (uniform() + uniform() + uniform() + uniform() - 2) * Math.sqrt(3);
    pool[i] = float32ToFloat16Bits(mean + std * z);
  }
  return new Uint8Array(pool.buffer);
}

function* poolWindows(pool: Uint8Array, start: number, length: number): Generator<Uint8Array> {
  let at = start % pool.length & ~1;
  let left = length;
  while (left > 0) {
    const n = Math.min(left, pool.length - at);
    yield pool.subarray(at, at + n);
    left -= n;
    at = 0;
  }
}

function optConfig(d: OptDims): Record<string, unknown> {
  return {
    _name_or_path: `synthetic/${d.hidden}x${d.layers}`,
    _remove_final_layer_norm: false,
    activation_dropout: 0.0,
    activation_function: 'relu',
    architectures: ['OPTForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: 2,
    do_layer_norm_before: true,
    dropout: 0.1,
    enable_bias: true,
    eos_token_id: 2,
    ffn_dim: d.ffn,
    hidden_size: d.hidden,
    init_std: 0.02,
    layer_norm_elementwise_affine: true,
    layerdrop: 0.0,
    max_position_embeddings: d.maxPositions,
    model_type: 'opt',
    num_attention_heads: d.heads,
    num_hidden_layers: d.layers,
    pad_token_id: 1,
    prefix: '</s>',
    torch_dtype: 'float16',
    transformers_version: '4.30.0.dev0',
    use_cache: true,
    vocab_size: d.vocab,
    word_embed_proj_dim: d.hidden,
  };
}

export async function writeSyntheticOptCheckpoint(options: SyntheticCheckpointOptions): Promise<SyntheticCheckpoint> {
  const dims = OPT_SHAPES[options.shape];
  const specs = optTensorSpecs(dims);
  const shards = assignShards(specs, options.maxShardBytes ?? dims.maxShardBytes);
  const seed = options.seed ?? 1234;
  const pools: Record<Init, Uint8Array> = { weight: makePool('weight', seed), bias: makePool('bias', seed + 1), norm: makePool('norm', seed + 2) };
  const totalBytes = specs.reduce((a, s) => a + bytesOf(s), 0);
  await mkdir(options.dir, { recursive: true });

  const pad = (n: number): string => String(n).padStart(5, '0');
  const names = shards.map((_, i) => `pytorch_model-${pad(i + 1)}-of-${pad(shards.length)}.bin`);
  const weightMap: Record<string, string> = {};
  let done = 0;
  for (let i = 0; i < shards.length; i++) {
    const shardSpecs = shards[i];
    for (const s of shardSpecs) weightMap[s.name] = names[i];
    await writeTorchZipCheckpoint(
      join(options.dir, names[i]),
      shardSpecs,
      function* (spec, index) {
        const init = (spec as SyntheticTensor).init;
        const length = bytesOf(spec);
        // Distinct start per tensor so no two tensors are identical.
        const start = ((index + 1) * 2654435761 + i * 40503) % pools[init].length;
        for (const w of poolWindows(pools[init], start, length)) {
          yield w;
          done += w.length;
          options.onProgress?.(done, totalBytes);
        }
      },
      { folder: names[i].replace(/\.bin$/, '') },
    );
  }
  const sortedMap = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  const indexFile = join(options.dir, 'pytorch_model.bin.index.json');
  await writeFile(indexFile, `${JSON.stringify({ metadata: { total_size: totalBytes }, weight_map: sortedMap }, null, 2)}\n`);
  const configFile = join(options.dir, 'config.json');
  await writeFile(configFile, `${JSON.stringify(optConfig(dims), null, 2)}\n`);
  return {
    dir: options.dir,
    shards: names.map((n) => join(options.dir, n)),
    indexFile,
    configFile,
    tensorCount: specs.length,
    totalBytes,
    dims,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { shape: { type: 'string', default: 'opt-1.3b' }, out: { type: 'string' }, 'max-shard-bytes': { type: 'string' } },
  });
  const shape = values.shape as SyntheticShape;
  if (!(shape in OPT_SHAPES) || !values.out) {
    process.stderr.write(`usage: tsx bench/convert-synthetic.ts --shape ${Object.keys(OPT_SHAPES).join('|')} --out DIR\n`);
    process.exit(2);
  }
  const t0 = performance.now();
  let last = 0;
  const ckpt = await writeSyntheticOptCheckpoint({
    dir: values.out,
    shape,
    maxShardBytes: values['max-shard-bytes'] ? Number(values['max-shard-bytes']) : undefined,
    onProgress: (d, total) => {
      if (d - last > 1 << 30 || d === total) {
        last = d;
        process.stderr.write(`  ${(d / 1e9).toFixed(2)} / ${(total / 1e9).toFixed(2)} GB\n`);
      }
    },
  });
  const s = (performance.now() - t0) / 1000;
  process.stdout.write(
    `wrote ${ckpt.tensorCount} tensors, ${(ckpt.totalBytes / 1e9).toFixed(2)} GB in ${ckpt.shards.length} shard(s) to ${ckpt.dir} in ${s.toFixed(1)} s\n`,
  );
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  await main();
}
