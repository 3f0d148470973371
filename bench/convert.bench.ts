/**
 * bench:convert — writes a synthetic OPT-shaped fp16 sharded checkpoint (bench/convert-synthetic.ts),
 * a CLIP ViT-L/14-shaped vision checkpoint, a FROMAGe checkpoint and tokenizer files, then
 * runs `convertBundle` in a child process and prints its wall time and peak RSS.
 *
 *   npm run bench:convert                                  # opt-1.3b -> int4
 *   npm run bench:convert -- --shape opt-6.7b              # the real size (writes ~13 GB + bundle)
 *   npm run bench:convert -- --weights int8 --clip tiny --keep --work /big/disk/dir
 *
 * Goal for opt-6.7b on a 2-core machine: <= 15 min and <= 8 GB peak RSS.
 */
import { fork } from 'node:child_process';
import { access, mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { writeTorchZipCheckpoint, type TorchTensorSpec } from '../src/convert/readers/torch-zip-writer.ts';
import { OPT_SHAPES, writeSyntheticOptCheckpoint, type SyntheticShape } from './convert-synthetic.ts';
import { writeSyntheticWordTokenizer } from './synthetic-bundle.ts';
import { xorshift32 } from './xorshift.ts';

const FIXTURES = resolve('test/fixtures');

interface ClipDims {
  hidden: number;
  layers: number;
  heads: number;
  intermediate: number;
  image: number;
  patch: number;
}

const CLIP_SHAPES: Record<'large' | 'tiny', ClipDims> = {
  large: { hidden: 1024, layers: 24, heads: 16, intermediate: 4096, image: 224, patch: 14 },
  tiny: { hidden: 48, layers: 2, heads: 4, intermediate: 96, image: 32, patch: 8 },
};

/** Deterministic small random float32 values (uniform +-0.02, norms around 1). */
function randomFloats(n: number, seed: number, center = 0, spread = 0.02): Float32Array {
  const uniform = xorshift32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = center + spread * (2 * uniform() - 1);
  return out;
}

/** A safetensors file written tensor by tensor (CLIP's model.safetensors layout, fp32). */
async function writeSyntheticClip(dir: string, d: ClipDims): Promise<void> {
  const grid = d.image / d.patch;
  const specs: { name: string; shape: number[]; norm?: boolean }[] = [
    { name: 'vision_model.embeddings.class_embedding', shape: [d.hidden] },
    { name: 'vision_model.embeddings.patch_embedding.weight', shape: [d.hidden, 3, d.patch, d.patch] },
    { name: 'vision_model.embeddings.position_embedding.weight', shape: [grid * grid + 1, d.hidden] },
    { name: 'vision_model.pre_layrnorm.weight', shape: [d.hidden], norm: true },
    { name: 'vision_model.pre_layrnorm.bias', shape: [d.hidden] },
    { name: 'vision_model.post_layernorm.weight', shape: [d.hidden], norm: true },
    { name: 'vision_model.post_layernorm.bias', shape: [d.hidden] },
  ];
  for (let i = 0; i < d.layers; i++) {
    const p = `vision_model.encoder.layers.${i}.`;
    for (const n of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) specs.push({ name: `${p}self_attn.${n}.weight`, shape: [d.hidden, d.hidden] }, { name: `${p}self_attn.${n}.bias`, shape: [d.hidden] });
    for (const n of ['layer_norm1', 'layer_norm2']) specs.push({ name: `${p}${n}.weight`, shape: [d.hidden], norm: true }, { name: `${p}${n}.bias`, shape: [d.hidden] });
    specs.push(
      { name: `${p}mlp.fc1.weight`, shape: [d.intermediate, d.hidden] },
      { name: `${p}mlp.fc1.bias`, shape: [d.intermediate] },
      { name: `${p}mlp.fc2.weight`, shape: [d.hidden, d.intermediate] },
      { name: `${p}mlp.fc2.bias`, shape: [d.hidden] },
    );
  }
  const header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> = {};
  let offset = 0;
  for (const s of specs) {
    const bytes = s.shape.reduce((a, b) => a * b, 1) * 4;
    header[s.name] = { dtype: 'F32', shape: s.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const fh = await open(join(dir, 'model.safetensors'), 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    await fh.write(len);
    await fh.write(Buffer.from(json));
    let seed = 7;
    for (const s of specs) {
      const v = randomFloats(s.shape.reduce((a, b) => a * b, 1), seed++, s.norm ? 1 : 0);
      await fh.write(new Uint8Array(v.buffer));
    }
  } finally {
    await fh.close();
  }
  const vision_config = { hidden_size: d.hidden, intermediate_size: d.intermediate, num_hidden_layers: d.layers, num_attention_heads: d.heads, image_size: d.image, patch_size: d.patch, hidden_act: 'quick_gelu', layer_norm_eps: 1e-5, num_channels: 3 };
  await writeFile(join(dir, 'config.json'), JSON.stringify({ model_type: 'clip', vision_config }));
  const pre = JSON.parse(await readFile(join(FIXTURES, 'openai/clip-vit-large-patch14/preprocessor_config.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(dir, 'preprocessor_config.json'), JSON.stringify({ ...pre, size: d.image, crop_size: d.image }));
}

/** FROMAGe's pruned bf16 checkpoint and model_args.json for an OPT of `hidden` and CLIP of `clipHidden`. */
async function writeSyntheticFromage(dir: string, hidden: number, clipHidden: number, retId: number): Promise<void> {
  const emb = 256;
  const specs: TorchTensorSpec[] = [
    { name: 'model.logit_scale', dtype: 'bfloat16', shape: [] },
    { name: 'model.visual_embeddings.weight', dtype: 'bfloat16', shape: [hidden, clipHidden] },
    { name: 'model.visual_embeddings.bias', dtype: 'bfloat16', shape: [hidden] },
    { name: 'model.visual_fc.weight', dtype: 'bfloat16', shape: [emb, clipHidden] },
    { name: 'model.visual_fc.bias', dtype: 'bfloat16', shape: [emb] },
    { name: 'model.text_hidden_fcs.0.0.weight', dtype: 'bfloat16', shape: [emb, hidden] },
    { name: 'model.text_hidden_fcs.0.0.bias', dtype: 'bfloat16', shape: [emb] },
    { name: 'ret_input_embeddings.weight', dtype: 'bfloat16', shape: [1, hidden] },
  ];
  await writeTorchZipCheckpoint(
    join(dir, 'pretrained_ckpt.pth.tar'),
    specs,
    (spec, i) => {
      const f = randomFloats(Math.max(1, spec.shape.reduce((a, b) => a * b, 1)), 100 + i, spec.shape.length === 0 ? 2.9 : 0);
      const bf = new Uint16Array(f.length);
      const bits = new Uint32Array(f.buffer);
      for (let k = 0; k < f.length; k++) bf[k] = bits[k] >>> 16;
      return [new Uint8Array(bf.buffer)];
    },
    { folder: 'pretrained_ckpt' },
  );
  const args = JSON.parse(await readFile(join(FIXTURES, 'fromage_model/model_args.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(dir, 'model_args.json'), JSON.stringify({ ...args, shared_emb_dim: emb, n_visual_tokens: 1, retrieval_token_idx: retId }));
}

/**
 * OPT tokenizer files with the real vocabulary size; returns the size. Full-size shapes get the
 * synthetic word vocabulary (prose at about a token per word, as with OPT's own, so a served
 * dialogue grows as it would); the tiny shape, too small for it, the fixture merges and fillers.
 */
async function writeSyntheticTokenizer(dir: string, size: number): Promise<number> {
  if (size >= 50265) return writeSyntheticWordTokenizer(dir, size);
  const vocab = JSON.parse(await readFile(join(FIXTURES, 'facebook/opt-6.7b/vocab.json'), 'utf8')) as Record<string, number>;
  for (let id = Object.keys(vocab).length; id < size; id++) vocab[`synthetic${id}`] = id;
  await writeFile(join(dir, 'vocab.json'), JSON.stringify(vocab));
  for (const f of ['merges.txt', 'tokenizer_config.json', 'special_tokens_map.json']) {
    await writeFile(join(dir, f), await readFile(join(FIXTURES, 'facebook/opt-6.7b', f)));
  }
  return Object.keys(vocab).length;
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

/** Child mode: run one conversion and report wall time and peak RSS to the parent. */
async function child(): Promise<void> {
  const [optDir, clipDir, fromageDir, outDir, weights, blockSize] = process.argv.slice(3);
  const { convertBundle } = await import('../src/convert/convert.ts');
  const t0 = performance.now();
  await convertBundle({ optDir, clipDir, fromageDir, outDir, weights: weights as 'int4', blockSize: Number(blockSize), progress: { plain: true } });
  const seconds = (performance.now() - t0) / 1000;
  process.send?.({ seconds, maxRssKiB: process.resourceUsage().maxRSS });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      shape: { type: 'string', default: 'opt-1.3b' },
      weights: { type: 'string', default: 'int4' },
      'block-size': { type: 'string', default: '32' },
      clip: { type: 'string', default: 'large' },
      work: { type: 'string', default: join(tmpdir(), 'fromage-bench-convert') },
      keep: { type: 'boolean', default: false },
    },
  });
  const shape = values.shape as SyntheticShape;
  if (!(shape in OPT_SHAPES) || !(values.clip === 'large' || values.clip === 'tiny')) {
    process.stderr.write(`usage: npm run bench:convert -- [--shape ${Object.keys(OPT_SHAPES).join('|')}] [--weights fp32|fp16|int8|int4] [--clip large|tiny] [--work DIR] [--keep]\n`);
    process.exit(2);
  }
  const work = resolve(values.work, shape);
  const optDir = join(work, 'opt');
  const clipDir = join(work, `clip-${values.clip}`);
  const fromageDir = join(work, 'fromage');
  const outDir = join(work, `bundle-${values.weights}`);
  const dims = OPT_SHAPES[shape];
  const clipDims = CLIP_SHAPES[values.clip];

  const t0 = performance.now();
  if (!(await exists(join(optDir, 'pytorch_model.bin.index.json')))) {
    process.stderr.write(`writing synthetic ${shape} fp16 checkpoint to ${optDir} ...\n`);
    await writeSyntheticOptCheckpoint({ dir: optDir, shape });
  }
  const base = await writeSyntheticTokenizer(optDir, dims.vocab - 7); // + <|image|>, [RET] = 50267 for OPT
  if (!(await exists(join(clipDir, 'model.safetensors')))) {
    await mkdir(clipDir, { recursive: true });
    await writeSyntheticClip(clipDir, clipDims);
  }
  await mkdir(fromageDir, { recursive: true });
  await writeSyntheticFromage(fromageDir, dims.hidden, clipDims.hidden, base + 1);
  const prepSeconds = (performance.now() - t0) / 1000;
  await rm(outDir, { recursive: true, force: true });

  const result = await new Promise<{ seconds: number; maxRssKiB: number }>((res, rej) => {
    const c = fork(process.argv[1], ['--child', optDir, clipDir, fromageDir, outDir, values.weights, values['block-size']], { execArgv: ['--import', 'tsx'] });
    let got: { seconds: number; maxRssKiB: number } | undefined;
    c.on('message', (m) => (got = m as typeof got));
    c.on('exit', (code) => (code === 0 && got ? res(got) : rej(new Error(`conversion failed (exit ${code})`))));
  });
  const stdout = process.stdout;
  stdout.write(`\nbench:convert  ${shape} fp16 (${dims.layers} layers, hidden ${dims.hidden}) + CLIP ${values.clip} -> ${values.weights} (block ${values['block-size']})\n`);
  stdout.write(`  synthetic inputs prepared in ${prepSeconds.toFixed(1)} s (${work})\n`);
  stdout.write(`  convert: ${result.seconds.toFixed(1)} s, peak RSS ${(result.maxRssKiB / 1024 / 1024).toFixed(2)} GiB\n`);
  if (!values.keep) await rm(work, { recursive: true, force: true });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  if (process.argv[2] === '--child') await child();
  else await main();
}
