/**
 * `fromage.json`, the bundle manifest: written by the converter, validated by the runtime.
 * A change that breaks older bundles bumps FORMAT_VERSION.
 */
import { z } from 'zod';

export const BUNDLE_FORMAT = 'fromage-bundle';
export const FORMAT_VERSION = 2;
export const MANIFEST_FILE = 'fromage.json';

export const manifestSchema = z.object({
  format: z.literal(BUNDLE_FORMAT),
  format_version: z.number().int(),
  /** Stable id of this bundle (hash of sources + options); history caches are keyed by it. */
  id: z.string().min(8),
  created: z.string(),
  model: z.object({
    hidden_size: z.number().int().positive(),
    num_layers: z.number().int().positive(),
    num_heads: z.number().int().positive(),
    head_dim: z.number().int().positive(),
    ffn_dim: z.number().int().positive(),
    /** Rows of the (resized) embedding table = logits width = tokenizer length. */
    vocab_size: z.number().int().positive(),
    /** Decoder positions (OPT: 2048). */
    max_positions: z.number().int().positive(),
    n_visual_tokens: z.number().int().positive(),
    shared_emb_dim: z.number().int().positive(),
    clip_hidden_size: z.number().int().positive(),
    image_size: z.number().int().positive(),
    /** Raw FROMAGe logit_scale; retrieval scores are exp(logit_scale) * cosine. */
    logit_scale: z.number(),
  }),
  tokens: z.object({
    bos: z.number().int(),
    eos: z.number().int(),
    pad: z.number().int(),
    image: z.number().int(),
    ret: z.number().int(),
    newline: z.number().int(),
  }),
  preprocess: z.object({
    /** Shortest side is resized to this, then center-cropped to crop_size. */
    size: z.number().int().positive(),
    crop_size: z.number().int().positive(),
    resample: z.literal('bicubic'),
    rescale_factor: z.number(),
    image_mean: z.array(z.number()).length(3),
    image_std: z.array(z.number()).length(3),
  }),
  graphs: z.object({
    vision: z.string(),
    embed: z.string(),
    decoder: z.string(),
  }),
  weights: z.object({
    dtype: z.enum(['fp32', 'fp16', 'int8', 'int4']),
    /** MatMulNBits block size for int8/int4. */
    block_size: z.number().int().positive().optional(),
  }),
  fromage_args: z.record(z.string(), z.unknown()),
  sources: z.array(z.object({ path: z.string(), sha256: z.string().regex(/^[0-9a-f]{64}$/), bytes: z.number().int().nonnegative() })),
  converter: z.object({ version: z.string(), options: z.record(z.string(), z.unknown()) }).optional(),
});

export type Manifest = z.infer<typeof manifestSchema>;
