/**
 * Shared helpers for the converter tests: fixture paths, the reference tensors (read with the
 * project's own safetensors reader), conversion into temp dirs, and ORT runners.
 */
import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { convertBundle, type ConvertOptions, type ConvertResult } from '../../src/convert/convert.ts';
import { openCheckpoint } from '../../src/convert/readers/index.ts';
import type { TensorSource } from '../../src/convert/tensor-source.ts';
import { KvCache } from '../../src/model/kv-cache.ts';

export const FIX = resolve('test/fixtures');
export const OPT_DIR = join(FIX, 'facebook/opt-6.7b');
export const OPT_FP32_DIR = join(FIX, 'variants/opt_fp32');
export const CLIP_DIR = join(FIX, 'openai/clip-vit-large-patch14');
export const FROMAGE_VIS1 = join(FIX, 'fromage_model');
export const FROMAGE_VIS4 = join(FIX, 'fromage_model/fromage_vis4');

export interface RefTensor {
  data: Float32Array;
  shape: number[];
}

let reference: TensorSource | undefined;

export async function ref(name: string): Promise<RefTensor> {
  reference ??= await openCheckpoint(join(FIX, 'reference/reference.safetensors'));
  const info = reference.info(name);
  return { data: await reference.readFloat32(name), shape: [...info.shape] };
}

export async function refInt(name: string): Promise<number[]> {
  reference ??= await openCheckpoint(join(FIX, 'reference/reference.safetensors'));
  const raw = await reference.readRaw(name);
  if (raw.dtype !== 'int64') throw new Error(`${name} is ${raw.dtype}`);
  return Array.from(new BigInt64Array(raw.bytes.slice().buffer), Number);
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function argmax(a: ArrayLike<number>, from = 0, to = a.length): number {
  let best = from;
  for (let i = from; i < to; i++) if (a[i] > a[best]) best = i;
  return best - from;
}

const tempDirs: string[] = [];

/** A temp folder of symlinks: `files` maps a name in the folder to the file it points at. */
export async function assembleDir(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'fromage-src-'));
  tempDirs.push(dir);
  for (const [name, target] of Object.entries(files)) await symlink(target, join(dir, name));
  return dir;
}

/** The canonical OPT folder's tokenizer files, to pair with another weights file. */
export function optTokenizerFiles(): Record<string, string> {
  return Object.fromEntries(['vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json'].map((f) => [f, join(OPT_DIR, f)]));
}

export async function convertToTemp(o: Partial<ConvertOptions> = {}): Promise<ConvertResult> {
  const dir = await mkdtemp(join(tmpdir(), 'fromage-convert-'));
  tempDirs.push(dir);
  return convertBundle({
    optDir: OPT_DIR,
    clipDir: CLIP_DIR,
    fromageDir: FROMAGE_VIS1,
    outDir: join(dir, 'bundle'),
    weights: 'fp32',
    progress: { silent: true },
    ...o,
  });
}

export async function cleanupTemp(): Promise<void> {
  for (const d of tempDirs.splice(0)) await rm(d, { recursive: true, force: true });
}

export function f32(data: ArrayLike<number>, dims: number[]): ort.Tensor {
  return new ort.Tensor('float32', Float32Array.from(data), dims);
}

export function i64(data: readonly number[], dims: number[]): ort.Tensor {
  return new ort.Tensor('int64', BigInt64Array.from(data.map(BigInt)), dims);
}

/** Sessions of one bundle, single-threaded (deterministic, and the machine is shared). */
export async function openBundle(dir: string): Promise<{ vision: ort.InferenceSession; embed: ort.InferenceSession; decoder: ort.InferenceSession; release(): Promise<void> }> {
  const opts: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 1, interOpNumThreads: 1 };
  const vision = await ort.InferenceSession.create(join(dir, 'vision.onnx'), opts);
  const embed = await ort.InferenceSession.create(join(dir, 'embed.onnx'), opts);
  const decoder = await ort.InferenceSession.create(join(dir, 'decoder.onnx'), opts);
  return {
    vision,
    embed,
    decoder,
    async release() {
      await Promise.all([vision.release(), embed.release(), decoder.release()]);
    },
  };
}

export interface DecoderStep {
  logits: Float32Array;
  retEmbeddings: Float32Array;
  /** new_key_values.{i}.key/.value in layer order: [1, heads, S, headDim] each. */
  newKv: ort.Tensor[];
  /** The cache after this step (the one passed in, extended), for the next call. */
  cache: KvCache;
}

/**
 * One decoder call through the runtime's KvCache: `embeds` [1, S, H] after `cache` (undefined
 * for a prefill, fed as capacity 0). Later calls feed the cache's whole capacity, empty slots
 * masked, as the runtime does.
 */
export async function runDecoder(
  decoder: ort.InferenceSession,
  embeds: Float32Array,
  hidden: number,
  layers: number,
  heads: number,
  cache: KvCache | undefined,
  keep: number,
): Promise<DecoderStep> {
  const S = embeds.length / hidden;
  const kv = cache ?? new KvCache({ layers, heads, headDim: hidden / heads, maxPositions: 1 << 16 });
  kv.reserve(S);
  const feeds: Record<string, ort.Tensor> = {
    inputs_embeds: f32(embeds, [1, S, hidden]),
    attention_mask: kv.attentionMask(S),
    position_ids: i64(Array.from({ length: S }, (_, i) => kv.length + i), [1, S]),
    num_logits_to_keep: i64([keep], []),
    ...kv.feeds(),
  };
  const out = await decoder.run(feeds);
  const newKv: ort.Tensor[] = [];
  for (let i = 0; i < layers; i++) newKv.push(out[`new_key_values.${i}.key`], out[`new_key_values.${i}.value`]);
  kv.append(newKv.map((t) => t.data as Float32Array), S);
  return { logits: out.logits.data as Float32Array, retEmbeddings: out.ret_embeddings.data as Float32Array, newKv, cache: kv };
}
