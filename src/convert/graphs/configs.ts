/**
 * The upstream JSON files the converter reads, validated with the defaults HF applies when a
 * field is absent (hub config.json files often omit default values).
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import type { ClipVisionConfig } from './vision.ts';
import type { OptConfig } from './decoder.ts';
import { ConvertError } from './weights.ts';

async function readJson(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConvertError(`${path}: cannot read ${what} (${code === 'ENOENT' ? 'file not found' : String(err)})`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new ConvertError(`${path}: ${what} is not valid JSON (${(err as Error).message})`);
  }
}

function parseWith<T>(schema: z.ZodType<T>, value: unknown, path: string, what: string): T {
  const r = schema.safeParse(value);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new ConvertError(`${path}: unexpected ${what} (${issues})`);
  }
  return r.data;
}

const int = z.number().int().positive();

// OPTConfig defaults (transformers OPTConfig.__init__).
const optSchema = z
  .object({
    model_type: z.string().optional(),
    vocab_size: int.default(50272),
    hidden_size: int.default(768),
    num_hidden_layers: int.default(12),
    ffn_dim: int.default(3072),
    max_position_embeddings: int.default(2048),
    do_layer_norm_before: z.boolean().default(true),
    _remove_final_layer_norm: z.boolean().default(false),
    word_embed_proj_dim: int.nullable().optional(),
    num_attention_heads: int.default(12),
    activation_function: z.string().default('relu'),
    enable_bias: z.boolean().default(true),
    pad_token_id: z.number().int().default(1),
    bos_token_id: z.number().int().default(2),
    eos_token_id: z.number().int().default(2),
  })
  .loose();

export type OptFileConfig = OptConfig & { pad_token_id: number; bos_token_id: number; eos_token_id: number };

export async function readOptConfig(path: string): Promise<OptFileConfig> {
  const c = parseWith(optSchema, await readJson(path, 'OPT config'), path, 'OPT config');
  if (c.model_type !== undefined && c.model_type !== 'opt') throw new ConvertError(`${path}: model_type is ${c.model_type}, expected opt`);
  return { ...c, word_embed_proj_dim: c.word_embed_proj_dim ?? c.hidden_size };
}

// CLIPVisionConfig defaults.
const clipVisionSchema = z
  .object({
    hidden_size: int.default(768),
    intermediate_size: int.default(3072),
    num_hidden_layers: int.default(12),
    num_attention_heads: int.default(12),
    num_channels: int.default(3),
    image_size: int.default(224),
    patch_size: int.default(32),
    hidden_act: z.string().default('quick_gelu'),
    layer_norm_eps: z.number().positive().default(1e-5),
  })
  .loose();

/** CLIP config.json: a full CLIPConfig (vision_config inside) or a CLIPVisionConfig. */
export async function readClipVisionConfig(path: string): Promise<ClipVisionConfig> {
  const raw = await readJson(path, 'CLIP config');
  const obj = typeof raw === 'object' && raw !== null ? (raw as Record<string, unknown>) : {};
  const vision = 'vision_config' in obj ? obj.vision_config : raw;
  return parseWith(clipVisionSchema, vision, path, 'CLIP vision config');
}

const preprocessorSchema = z
  .object({
    size: z.union([int, z.object({ shortest_edge: int })]),
    crop_size: z.union([int, z.object({ height: int, width: int })]),
    resample: z.number().int().default(3),
    do_rescale: z.boolean().optional(),
    rescale_factor: z.number().default(1 / 255),
    image_mean: z.array(z.number()).length(3),
    image_std: z.array(z.number()).length(3),
  })
  .loose();

export interface Preprocess {
  size: number;
  crop_size: number;
  resample: 'bicubic';
  rescale_factor: number;
  image_mean: number[];
  image_std: number[];
}

export async function readPreprocessorConfig(path: string): Promise<Preprocess> {
  const c = parseWith(preprocessorSchema, await readJson(path, 'CLIP preprocessor config'), path, 'CLIP preprocessor config');
  if (c.resample !== 3) throw new ConvertError(`${path}: resample ${c.resample} is not supported (CLIP uses 3 = bicubic)`);
  const size = typeof c.size === 'number' ? c.size : c.size.shortest_edge;
  let crop: number;
  if (typeof c.crop_size === 'number') crop = c.crop_size;
  else if (c.crop_size.height === c.crop_size.width) crop = c.crop_size.height;
  else throw new ConvertError(`${path}: non-square crop_size is not supported`);
  return { size, crop_size: crop, resample: 'bicubic', rescale_factor: c.rescale_factor, image_mean: c.image_mean, image_std: c.image_std };
}

const modelArgsSchema = z
  .object({
    n_visual_tokens: int,
    shared_emb_dim: int,
    text_emb_layers: z.array(z.number().int()).default([-1]),
    use_pooler: z.boolean().default(true),
    retrieval_token_idx: z.number().int().optional(),
  })
  .loose();

export type ModelArgs = z.infer<typeof modelArgsSchema>;

export async function readModelArgs(path: string): Promise<{ args: ModelArgs; raw: Record<string, unknown> }> {
  const raw = await readJson(path, 'FROMAGe model_args');
  const args = parseWith(modelArgsSchema, raw, path, 'FROMAGe model_args');
  if (args.text_emb_layers.length !== 1 || args.text_emb_layers[0] !== -1) {
    throw new ConvertError(`${path}: text_emb_layers ${JSON.stringify(args.text_emb_layers)} is not supported (FROMAGe's released model uses [-1])`);
  }
  if (!args.use_pooler) throw new ConvertError(`${path}: use_pooler=false is not supported (the released model uses the CLIP pooler output)`);
  return { args, raw: raw as Record<string, unknown> };
}
