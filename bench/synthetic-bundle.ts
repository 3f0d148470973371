/**
 * Random-weight bundles in OPT-125m shape (768 x 12 layers, vocab 50272) built from synthetic
 * facebook/opt-* / openai/clip-* / FROMAGe sources through the real converter (convertBundle),
 * so the graphs are the ones users get. Shared by bench:decode and bench:serve.
 *
 * The synthetic vocabulary has byte tokens, a list of common English words each reachable as
 * one token through merges (so prose tokenizes at about a token per word, as OPT's does), and
 * filler tokens up to OPT's 50265.
 */
import { existsSync } from 'node:fs';
import { cp, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { convertBundle } from '../src/convert/convert.ts';
import { openCheckpoint } from '../src/convert/readers/index.ts';
import { writeTorchZipCheckpoint, type TorchTensorSpec } from '../src/convert/readers/torch-zip-writer.ts';
import { float32ToFloat16Bits } from '../src/convert/quantize.ts';
import { BYTE_TO_CHAR } from '../src/model/tokenizer/byte-level.ts';
import { assignShards, optTensorSpecs, type OptDims } from './convert-synthetic.ts';
import { xorshift32 } from './xorshift.ts';

const FIXTURES = join(import.meta.dirname, '../test/fixtures');
export const OPT_125M: OptDims = { hidden: 768, layers: 12, heads: 12, ffn: 3072, vocab: 50272, maxPositions: 2048, maxShardBytes: 1_000_000_000 };
const CLIP_L14 = { hidden: 1024, layers: 24, heads: 16, intermediate: 4096, image: 224, patch: 14 };

/** Words the synthetic tokenizer keeps whole (with a leading space, as GPT-2 BPE does). */
export const SYNTHETIC_WORDS = (
  'the of and to in is was for on that with as it at by from this be are or an have not which one had ' +
  'but were all their there been has when who will more no if out so what up can about into them some ' +
  'time only than other then could its two first new these may like after where most over also did made ' +
  'many before must through back years much way well down should because each just those people how too ' +
  'little state good very make world still own see men work long get here between both life being under ' +
  'never day same another know while last might us great old year off come since against go came right ' +
  'used take three picture photo image dog cat tree house car street water city sky red blue green small ' +
  'large table window river mountain beach boat train road garden flower bird horse child woman man'
).split(' ');

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

/**
 * OPT-style tokenizer files with a synthetic `size`-entry vocabulary (50265 for OPT): byte
 * tokens, then every SYNTHETIC_WORDS word and every short letter string as one "Ġ"-led token.
 * Returns the vocabulary size.
 */
export async function writeSyntheticWordTokenizer(dir: string, size = 50265): Promise<number> {
  const vocab: Record<string, number> = { '<s>': 0, '<pad>': 1, '</s>': 2, '<unk>': 3 };
  let next = 4;
  const order = [...Array(256).keys()].sort((a, b) => (BYTE_TO_CHAR[a].codePointAt(0)! > 255 ? 1 : 0) - (BYTE_TO_CHAR[b].codePointAt(0)! > 255 ? 1 : 0) || a - b);
  for (const b of order) vocab[BYTE_TO_CHAR[b]] = next++;
  // Every token is "Ġ" + letters and every prefix of it is a token too, built by one merge of
  // (prefix, next letter): a decoded answer re-tokenizes to the same ids, as OPT's real
  // vocabulary mostly does, so a dialogue's history grows by about what was generated.
  const merges: string[] = [];
  const add = (word: string): void => {
    let piece = BYTE_TO_CHAR[32];
    for (const ch of word) {
      const merged = piece + ch;
      if (!(merged in vocab)) {
        vocab[merged] = next++;
        merges.push(`${piece} ${ch}`);
      }
      piece = merged;
    }
  };
  for (const word of SYNTHETIC_WORDS) add(word);
  if (next > size) throw new Error(`a synthetic word vocabulary needs at least ${next} entries, not ${size}`);
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  for (let length = 1; next < size; length++) {
    for (let i = 0; i < letters.length ** length && next < size; i++) {
      let word = '';
      for (let k = 0, n = i; k < length; k++, n = Math.floor(n / letters.length)) word = letters[n % letters.length] + word;
      add(word);
    }
  }
  await writeFile(join(dir, 'vocab.json'), JSON.stringify(vocab));
  await writeFile(join(dir, 'merges.txt'), `#version: 0.2\n${merges.join('\n')}\n`);
  await cp(join(FIXTURES, 'facebook/opt-6.7b/tokenizer_config.json'), join(dir, 'tokenizer_config.json'));
  await cp(join(FIXTURES, 'facebook/opt-6.7b/special_tokens_map.json'), join(dir, 'special_tokens_map.json'));
  return next;
}

/** facebook/opt-*-shaped folder: config, tokenizer files (a synthetic 50265-entry vocabulary), fp16 shards. */
async function writeOpt(dir: string, d: OptDims): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeSyntheticWordTokenizer(dir);
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

export interface SyntheticBundleOptions {
  /** Weights of the converted bundle (default fp32). */
  readonly weights?: 'fp32' | 'int8' | 'int4';
  /** A CLIP ViT-L/14-shaped vision tower instead of the fixture's tiny one. */
  readonly largeVision?: boolean;
}

/**
 * Builds (or, when `root/<name>/fromage.json` exists, reuses) an OPT-125m-shaped bundle under
 * `root`; sources already written there are reused. Returns the bundle directory.
 */
export async function syntheticBundle(root: string, options: SyntheticBundleOptions = {}): Promise<string> {
  const weights = options.weights ?? 'fp32';
  const out = join(root, weights === 'fp32' ? 'bundle' : `bundle-${weights}`);
  if (existsSync(join(out, 'fromage.json'))) return out;
  const opt = join(root, 'opt');
  const clip = join(root, 'clip');
  const fromage = join(root, 'fromage');
  if (!existsSync(join(opt, 'config.json'))) await writeOpt(opt, OPT_125M);
  const clipHidden = await writeClip(clip, options.largeVision ?? false);
  await writeFromage(fromage, OPT_125M.hidden, clipHidden);
  await convertBundle({ optDir: opt, clipDir: clip, fromageDir: fromage, outDir: out, weights, progress: { silent: true } });
  return out;
}
