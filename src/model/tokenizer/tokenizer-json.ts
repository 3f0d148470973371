/**
 * The subset of the Hugging Face `tokenizer.json` format the runtime reads. The bundle's file
 * is a valid tokenizers-library file (byte-level BPE); FROMAGe's slow-tokenizer conventions
 * are carried by the standard fields:
 * - `added_tokens[].lstrip/rstrip`: whitespace the token eats on that side (`[RET]`,
 *   `<|image|>` and `<pad>` strip both sides, `</s>` neither);
 * - `added_tokens[].special`: dropped by `skip_special_tokens` (`</s>` and `<|image|>` only);
 * - `post_processor` (TemplateProcessing): the special token put before a single sequence.
 */
import { z } from 'zod';

export const addedTokenSchema = z.object({
  id: z.number().int().nonnegative(),
  content: z.string().min(1),
  single_word: z.boolean().default(false),
  lstrip: z.boolean().default(false),
  rstrip: z.boolean().default(false),
  normalized: z.boolean().default(false),
  special: z.boolean().default(false),
});

const templatePieceSchema = z.union([
  z.object({ SpecialToken: z.object({ id: z.string(), type_id: z.number().int() }) }),
  z.object({ Sequence: z.object({ id: z.enum(['A', 'B']), type_id: z.number().int() }) }),
]);

export const tokenizerJsonSchema = z.object({
  version: z.string(),
  added_tokens: z.array(addedTokenSchema),
  pre_tokenizer: z.object({ type: z.literal('ByteLevel'), add_prefix_space: z.boolean() }).passthrough(),
  post_processor: z
    .object({
      type: z.literal('TemplateProcessing'),
      single: z.array(templatePieceSchema),
      special_tokens: z.record(z.string(), z.object({ id: z.string(), ids: z.array(z.number().int()), tokens: z.array(z.string()) })),
    })
    .passthrough()
    .nullable(),
  decoder: z.object({ type: z.literal('ByteLevel') }).passthrough(),
  model: z
    .object({
      type: z.literal('BPE'),
      unk_token: z.string().nullable(),
      vocab: z.record(z.string(), z.number().int().nonnegative()),
      merges: z.array(z.union([z.string(), z.tuple([z.string(), z.string()])])),
    })
    .passthrough(),
});

export type TokenizerJson = z.infer<typeof tokenizerJsonSchema>;
export type AddedTokenJson = z.infer<typeof addedTokenSchema>;
