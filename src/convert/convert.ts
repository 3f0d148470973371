/**
 * `fromage convert`: upstream checkpoints (hub layout) -> a model bundle directory.
 *
 * Everything is checked before the big work starts (configs, tokenizer fit, every tensor's
 * shape); the bundle is written into `<out>.tmp-XXXXXX` next to the target and renamed into
 * place only when complete, so a failed run never leaves a directory that looks like a bundle.
 * Tensors are read and written one at a time (see onnx/graph-builder.ts): peak memory is about
 * the largest tensor a few times over, plus the embedding table.
 */
import { createHash } from 'node:crypto';
import { access, chmod, mkdir, mkdtemp, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { BUNDLE_FORMAT, FORMAT_VERSION, MANIFEST_FILE, manifestSchema, type Manifest } from '../model/manifest.ts';
import { createProgress, type ProgressOptions } from '../progress.ts';
import { CHECKPOINT_CANDIDATES, openCheckpoint, sha256File } from './readers/index.ts';
import { writeTokenizerJson } from './tokenizer-json.ts';
import { readClipVisionConfig, readModelArgs, readOptConfig, readPreprocessorConfig, type OptFileConfig } from './graphs/configs.ts';
import { buildDecoderGraph, OPT_POSITION_OFFSET, optKeyPrefix } from './graphs/decoder.ts';
import { buildEmbedGraph } from './graphs/embed.ts';
import type { LinearOptions } from './graphs/layers.ts';
import { buildVisionGraph, type ClipVisionConfig } from './graphs/vision.ts';
import { CheckpointTensors, ConvertError, type WeightDType } from './graphs/weights.ts';

export const CONVERTER_VERSION = '1';
export const GRAPH_FILES = { vision: 'vision.onnx', embed: 'embed.onnx', decoder: 'decoder.onnx' } as const;
const FROMAGE_CKPT = 'pretrained_ckpt.pth.tar';

export interface ConvertOptions {
  /** facebook/opt-6.7b directory: config.json, vocab.json, merges.txt, weights. */
  optDir: string;
  /** openai/clip-vit-large-patch14 directory: config.json, preprocessor_config.json, weights. */
  clipDir: string;
  /** FROMAGe directory: model_args.json, pretrained_ckpt.pth.tar. */
  fromageDir: string;
  outDir: string;
  weights: WeightDType;
  /** MatMulNBits block size (int8/int4): a power of two >= 16. */
  blockSize?: number;
  progress?: ProgressOptions;
  /**
   * MatMulNBits accuracy_level (see graphs/layers.ts); default 4. On CPU, level 0 runs 8-bit
   * weights through a slow float path (30x slower decode measured) and 4-bit ~1.5x slower.
   */
  accuracyLevel?: 0 | 4;
}

export interface ConvertResult {
  outDir: string;
  manifest: Manifest;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

async function requireFile(path: string, what: string): Promise<void> {
  try {
    if ((await stat(path)).isFile()) return;
  } catch {
    // fall through
  }
  throw new ConvertError(`${path}: ${what} not found`);
}

/** Per-layer weight storage for each dtype (see checkpoints/README.md, "Weights"). */
function linearPlans(dtype: WeightDType, blockSize: number, accuracyLevel: 0 | 4): { decoder: LinearOptions; vision: LinearOptions } {
  switch (dtype) {
    case 'fp32':
      return { decoder: { dtype, blockSize }, vision: { dtype, blockSize } };
    case 'fp16':
      return { decoder: { dtype, blockSize }, vision: { dtype: 'fp16', blockSize } };
    case 'int8':
    case 'int4':
      // CLIP is small next to OPT and retrieval is sensitive to it: 8 bits at most there.
      return { decoder: { dtype, blockSize, accuracyLevel }, vision: { dtype: 'int8', blockSize, accuracyLevel } };
  }
}

function checkBlockSize(blockSize: number): void {
  if (!Number.isInteger(blockSize) || blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) {
    throw new ConvertError(`--block-size ${blockSize} is invalid: use a power of two >= 16 (e.g. 32, 64, 128)`);
  }
}

/** The shapes every OPT tensor must have (checked before any writing). */
function optExpectedShapes(cfg: OptFileConfig): [string, number[]][] {
  const H = cfg.hidden_size;
  const F = cfg.ffn_dim;
  const out: [string, number[]][] = [
    ['embed_tokens.weight', [cfg.vocab_size, H]],
    ['embed_positions.weight', [cfg.max_position_embeddings + OPT_POSITION_OFFSET, H]],
    ['final_layer_norm.weight', [H]],
    ['final_layer_norm.bias', [H]],
  ];
  const bias = (name: string, shape: number[]): [string, number[]][] => (cfg.enable_bias ? [[name, shape]] : []);
  for (let i = 0; i < cfg.num_hidden_layers; i++) {
    const p = `layers.${i}.`;
    for (const n of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) out.push([`${p}self_attn.${n}.weight`, [H, H]], ...bias(`${p}self_attn.${n}.bias`, [H]));
    for (const n of ['self_attn_layer_norm', 'final_layer_norm']) out.push([`${p}${n}.weight`, [H]], [`${p}${n}.bias`, [H]]);
    out.push([`${p}fc1.weight`, [F, H]], ...bias(`${p}fc1.bias`, [F]), [`${p}fc2.weight`, [H, F]], ...bias(`${p}fc2.bias`, [H]));
  }
  return out;
}

function clipExpectedShapes(c: ClipVisionConfig): [string, number[]][] {
  const H = c.hidden_size;
  const I = c.intermediate_size;
  const grid = Math.floor(c.image_size / c.patch_size);
  const out: [string, number[]][] = [
    ['embeddings.patch_embedding.weight', [H, c.num_channels, c.patch_size, c.patch_size]],
    ['embeddings.class_embedding', [H]],
    ['embeddings.position_embedding.weight', [grid * grid + 1, H]],
    ['pre_layrnorm.weight', [H]],
    ['pre_layrnorm.bias', [H]],
    ['post_layernorm.weight', [H]],
    ['post_layernorm.bias', [H]],
  ];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `encoder.layers.${i}.`;
    for (const n of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) out.push([`${p}self_attn.${n}.weight`, [H, H]], [`${p}self_attn.${n}.bias`, [H]]);
    for (const n of ['layer_norm1', 'layer_norm2']) out.push([`${p}${n}.weight`, [H]], [`${p}${n}.bias`, [H]]);
    out.push([`${p}mlp.fc1.weight`, [I, H]], [`${p}mlp.fc1.bias`, [I]], [`${p}mlp.fc2.weight`, [H, I]], [`${p}mlp.fc2.bias`, [H]]);
  }
  return out;
}

interface SourceFile {
  /** Folder role in the manifest path (opt/, clip/, fromage/). */
  role: 'opt' | 'clip' | 'fromage';
  path: string;
}

/** Every file the conversion reads, for the manifest's provenance (hashed at the end). */
async function collectSourceFiles(o: ConvertOptions, opt: CheckpointTensors, clip: CheckpointTensors, fromage: CheckpointTensors): Promise<SourceFile[]> {
  const out: SourceFile[] = [];
  const add = (role: SourceFile['role'], path: string) => {
    if (!out.some((s) => resolve(s.path) === resolve(path))) out.push({ role, path });
  };
  add('opt', join(o.optDir, 'config.json'));
  for (const f of ['vocab.json', 'merges.txt', 'tokenizer_config.json']) {
    if (await exists(join(o.optDir, f))) add('opt', join(o.optDir, f));
  }
  // The shard index the reader followed, if it picked one (same preference order).
  for (const name of CHECKPOINT_CANDIDATES) {
    if (await exists(join(o.optDir, name))) {
      if (name.endsWith('.index.json')) add('opt', join(o.optDir, name));
      break;
    }
  }
  for (const f of opt.source.files()) add('opt', f);
  add('clip', join(o.clipDir, 'config.json'));
  add('clip', join(o.clipDir, 'preprocessor_config.json'));
  for (const f of clip.source.files()) add('clip', f);
  add('fromage', join(o.fromageDir, 'model_args.json'));
  for (const f of fromage.source.files()) add('fromage', f);
  return out;
}

/** Opens a checkpoint, turning reader failures into ConvertErrors (they already name the file). */
async function open(path: string, label: string): Promise<CheckpointTensors> {
  try {
    return new CheckpointTensors(await openCheckpoint(path), label);
  } catch (err) {
    const e = err as Error & { userFacing?: boolean };
    if (e.userFacing) throw new ConvertError(e.message);
    throw err;
  }
}

/** Reader errors met while reading tensors (e.g. a truncated shard) become ConvertErrors. */
function asConvertError(err: unknown): unknown {
  const e = err as Error & { userFacing?: boolean };
  if (e instanceof Error && e.userFacing && !(e instanceof ConvertError)) return new ConvertError(e.message);
  return err;
}

export async function convertBundle(o: ConvertOptions): Promise<ConvertResult> {
  const blockSize = o.blockSize ?? 32;
  checkBlockSize(blockSize);
  const outDir = resolve(o.outDir);
  if (await exists(outDir)) {
    const entries = await readdir(outDir).catch(() => ['?']);
    if (entries.length > 0) throw new ConvertError(`${outDir} already exists and is not empty; remove it or choose another --out`);
  }

  // Configs (cheap, and they drive every shape check).
  const optCfgPath = join(o.optDir, 'config.json');
  const clipCfgPath = join(o.clipDir, 'config.json');
  const prePath = join(o.clipDir, 'preprocessor_config.json');
  const argsPath = join(o.fromageDir, 'model_args.json');
  const ckptPath = join(o.fromageDir, FROMAGE_CKPT);
  const optCfg = await readOptConfig(optCfgPath);
  const clipCfg = await readClipVisionConfig(clipCfgPath);
  const preprocess = await readPreprocessorConfig(prePath);
  const { args: modelArgs, raw: rawArgs } = await readModelArgs(argsPath);
  for (const f of ['vocab.json', 'merges.txt']) await requireFile(join(o.optDir, f), `OPT tokenizer file ${f}`);
  await requireFile(ckptPath, 'FROMAGe checkpoint');
  if (preprocess.crop_size !== clipCfg.image_size) {
    throw new ConvertError(`${prePath}: crop_size ${preprocess.crop_size} does not match image_size ${clipCfg.image_size} in ${clipCfgPath}`);
  }

  const sources: CheckpointTensors[] = [];
  let tmpDir: string | undefined;
  try {
    const opt = await open(o.optDir, `OPT checkpoint in ${o.optDir}`);
    sources.push(opt);
    const clip = await open(o.clipDir, `CLIP checkpoint in ${o.clipDir}`);
    sources.push(clip);
    const fromage = await open(ckptPath, ckptPath);
    sources.push(fromage);

    const H = optCfg.hidden_size;
    const E = modelArgs.shared_emb_dim;
    const nv = modelArgs.n_visual_tokens;
    const prefix = optKeyPrefix(opt, optCfg);
    for (const [name, shape] of optExpectedShapes(optCfg)) opt.expectShape(prefix + name, shape, `${optCfgPath}`);
    for (const [name, shape] of clipExpectedShapes(clipCfg)) clip.expectShape(`vision_model.${name}`, shape, `${clipCfgPath}`);
    const fromageWhy = `${argsPath} and ${optCfgPath}`;
    fromage.expectShape('model.visual_embeddings.weight', [H * nv, clipCfg.hidden_size], fromageWhy);
    fromage.expectShape('model.visual_embeddings.bias', [H * nv], fromageWhy);
    fromage.expectShape('model.visual_fc.weight', [E, clipCfg.hidden_size], fromageWhy);
    fromage.expectShape('model.visual_fc.bias', [E], fromageWhy);
    fromage.expectShape('model.text_hidden_fcs.0.0.weight', [E, H], fromageWhy);
    fromage.expectShape('model.text_hidden_fcs.0.0.bias', [E], fromageWhy);
    fromage.expectShape('model.logit_scale', [], fromageWhy);
    fromage.expectShape('ret_input_embeddings.weight', [1, H], fromageWhy);

    await mkdir(dirname(outDir), { recursive: true });
    tmpDir = await mkdtemp(`${outDir}.tmp-`);

    // Tokenizer: its length is the resized vocabulary; it must fit the checkpoint.
    const tok = await writeTokenizerJson(o.optDir, join(tmpDir, 'tokenizer.json')).catch((err: Error) => {
      throw new ConvertError(`${join(o.optDir, 'vocab.json')}: cannot build the tokenizer (${err.message})`);
    });
    if (tok.vocabSize > optCfg.vocab_size) {
      throw new ConvertError(
        `${join(o.optDir, 'vocab.json')}: the tokenizer has ${tok.vocabSize} tokens (with <|image|> and [RET]) but the checkpoint's embed_tokens has only ${optCfg.vocab_size} rows; vocab.json does not belong to this checkpoint`,
      );
    }
    if (modelArgs.retrieval_token_idx !== undefined && modelArgs.retrieval_token_idx !== tok.retId) {
      throw new ConvertError(`${argsPath}: retrieval_token_idx ${modelArgs.retrieval_token_idx} differs from the tokenizer's [RET] id ${tok.retId} (vocab.json from another model?)`);
    }

    const sourceFiles = await collectSourceFiles(o, opt, clip, fromage);
    // Progress in bytes: every tensor read (its stored size), then every source file hashed.
    const fromageTensors = ['model.visual_embeddings.weight', 'model.visual_embeddings.bias', 'model.visual_fc.weight', 'model.visual_fc.bias', 'model.text_hidden_fcs.0.0.weight', 'model.text_hidden_fcs.0.0.bias', 'model.logit_scale', 'ret_input_embeddings.weight'];
    let total = 0;
    for (const [name] of optExpectedShapes(optCfg)) total += opt.storedBytes(prefix + name);
    for (const [name] of clipExpectedShapes(clipCfg)) total += clip.storedBytes(`vision_model.${name}`);
    for (const name of fromageTensors) total += fromage.storedBytes(name);
    for (const s of sourceFiles) total += (await stat(s.path)).size;
    const bar = createProgress(`convert (${o.weights})`, total, { unit: 'bytes', ...o.progress });
    for (const src of sources) src.onRead = (name, bytes) => bar.increment(bytes, name);
    const plans = linearPlans(o.weights, blockSize, o.accuracyLevel ?? 4);

    await buildVisionGraph(join(tmpDir, GRAPH_FILES.vision), clip, clipCfg, fromage, { hidden: H, nVisualTokens: nv, sharedEmbDim: E }, { encoder: plans.vision });

    // The embedding table as FROMAGe uses it: resize_token_embeddings(len(tokenizer)) drops
    // the padding rows, then the [RET] row is overwritten with ret_input_embeddings.
    const V = tok.vocabSize;
    // Only the kept rows are copied out; the full table is garbage as soon as this returns.
    const table = (await opt.f32(`${prefix}embed_tokens.weight`, [optCfg.vocab_size, H], optCfgPath)).slice(0, V * H);
    table.set(await fromage.f32('ret_input_embeddings.weight', [1, H], fromageWhy), tok.retId * H);
    await buildEmbedGraph(join(tmpDir, GRAPH_FILES.embed), table, V, H, o.weights === 'fp32' ? 'fp32' : o.weights === 'fp16' ? 'fp16' : 'int8');

    const textFcWeight = await fromage.f32('model.text_hidden_fcs.0.0.weight', [E, H], fromageWhy);
    const textFcBias = await fromage.f32('model.text_hidden_fcs.0.0.bias', [E], fromageWhy);
    await buildDecoderGraph(
      join(tmpDir, GRAPH_FILES.decoder),
      opt,
      optCfg,
      { table, vocab: V, textFcWeight, textFcBias, sharedEmbDim: E },
      { layers: plans.decoder, lmHead: plans.decoder },
    );
    const logitScale = (await fromage.f32('model.logit_scale', [], fromageWhy))[0];

    const hashed: Manifest['sources'] = [];
    for (const s of sourceFiles) {
      let last = 0;
      const sha256 = await sha256File(s.path, (done) => {
        bar.increment(done - last, `sha256 ${basename(s.path)}`);
        last = done;
      });
      hashed.push({ path: `${s.role}/${basename(s.path)}`, sha256, bytes: last });
    }
    bar.stop();

    const options = { weights: o.weights, block_size: o.weights.startsWith('int') ? blockSize : undefined, accuracy_level: o.weights.startsWith('int') ? (o.accuracyLevel ?? 4) : undefined };
    const id = createHash('sha256')
      .update(JSON.stringify({ sources: hashed.map((s) => s.sha256), options, converter: CONVERTER_VERSION }))
      .digest('hex')
      .slice(0, 16);
    const manifest: Manifest = manifestSchema.parse({
      format: BUNDLE_FORMAT,
      format_version: FORMAT_VERSION,
      id,
      created: new Date().toISOString(),
      model: {
        hidden_size: H,
        num_layers: optCfg.num_hidden_layers,
        num_heads: optCfg.num_attention_heads,
        head_dim: H / optCfg.num_attention_heads,
        ffn_dim: optCfg.ffn_dim,
        vocab_size: V,
        max_positions: optCfg.max_position_embeddings,
        n_visual_tokens: nv,
        shared_emb_dim: E,
        clip_hidden_size: clipCfg.hidden_size,
        image_size: clipCfg.image_size,
        logit_scale: logitScale,
      },
      tokens: { bos: tok.bosId, eos: tok.eosId, pad: optCfg.pad_token_id, image: tok.imageId, ret: tok.retId, newline: tok.newlineId },
      preprocess,
      graphs: { ...GRAPH_FILES },
      weights: o.weights.startsWith('int') ? { dtype: o.weights, block_size: blockSize } : { dtype: o.weights },
      fromage_args: rawArgs,
      sources: hashed,
      converter: { version: CONVERTER_VERSION, options },
    });
    await writeFile(join(tmpDir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    // mkdtemp makes 0700; a bundle is read by the service, possibly as another user.
    await chmod(tmpDir, 0o755);
    if (await exists(outDir)) await rm(outDir, { recursive: true });
    await rename(tmpDir, outDir);
    tmpDir = undefined;
    return { outDir, manifest };
  } catch (err) {
    throw asConvertError(err);
  } finally {
    for (const s of sources) await s.source.close().catch(() => undefined);
    if (tmpDir) await rm(tmpDir, { recursive: true, force: true });
  }
}

