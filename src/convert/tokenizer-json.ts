/**
 * Writes the bundle's tokenizer.json (Hugging Face tokenizers format) from OPT's slow-tokenizer
 * files (vocab.json + merges.txt + tokenizer_config.json), with the tokens FROMAGe adds:
 * `<|image|>` (special, the cls token) and `[RET]` (not special), appended after the vocabulary.
 * The whitespace and skip flags encode what the slow tokenizer does after FROMAGe's set-up
 * (see src/model/tokenizer/tokenizer-json.ts).
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { Tokenizer } from '../model/tokenizer/tokenizer.ts';
import type { AddedTokenJson, TokenizerJson } from '../model/tokenizer/tokenizer-json.ts';

export const IMAGE_TOKEN = '<|image|>';
export const RET_TOKEN = '[RET]';

export interface TokenizerJsonInfo {
  /** Tokenizer length = rows of the resized embedding table (50267 for OPT). */
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  readonly imageId: number;
  readonly retId: number;
  readonly newlineId: number;
}

const tokenSpec = z.union([z.string(), z.object({ content: z.string() })]);
const tokenizerConfigSchema = z.object({
  bos_token: tokenSpec.optional(),
  eos_token: tokenSpec.optional(),
  pad_token: tokenSpec.optional(),
  add_bos_token: z.boolean().optional(),
  add_prefix_space: z.boolean().optional(),
});

function content(t: z.infer<typeof tokenSpec> | undefined, fallback: string): string {
  if (t === undefined) return fallback;
  return typeof t === 'string' ? t : t.content;
}

/** Builds the tokenizer.json object; `optDir` holds vocab.json, merges.txt and tokenizer_config.json. */
export async function buildTokenizerJson(optDir: string): Promise<TokenizerJson> {
  const vocabRaw: unknown = JSON.parse(await readFile(join(optDir, 'vocab.json'), 'utf8'));
  const vocab = z.record(z.string(), z.number().int().nonnegative()).parse(vocabRaw);
  const mergesText = await readFile(join(optDir, 'merges.txt'), 'utf8');
  const merges = mergesText
    .split('\n')
    .filter((line, i) => line.length > 0 && !(i === 0 && line.startsWith('#version')));
  let config: z.infer<typeof tokenizerConfigSchema> = {};
  try {
    config = tokenizerConfigSchema.parse(JSON.parse(await readFile(join(optDir, 'tokenizer_config.json'), 'utf8')));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (config.add_prefix_space) throw new Error(`${optDir}/tokenizer_config.json: add_prefix_space=true is not supported (OPT uses false)`);
  const bos = content(config.bos_token, '</s>');
  const eos = content(config.eos_token, '</s>');
  const pad = content(config.pad_token, '<pad>');
  const idOf = (tok: string): number => {
    const id = vocab[tok];
    if (id === undefined) throw new Error(`${optDir}/vocab.json has no entry for ${tok}`);
    return id;
  };
  const base = Object.keys(vocab).length;
  if (Object.values(vocab).reduce((m, v) => (v > m ? v : m), -1) !== base - 1) throw new Error(`${optDir}/vocab.json ids are not 0..${base - 1}`);
  if (vocab[IMAGE_TOKEN] !== undefined || vocab[RET_TOKEN] !== undefined) throw new Error(`${optDir}/vocab.json already contains FROMAGe's added tokens`);

  const added: AddedTokenJson[] = [];
  const push = (id: number, tok: string, strip: boolean, special: boolean): void => {
    if (added.some((a) => a.content === tok)) return;
    added.push({ id, content: tok, single_word: false, lstrip: strip, rstrip: strip, normalized: false, special });
  };
  // After `pad_token = eos_token`, the old pad token (`<pad>`) stays a no-split token that is no
  // longer special: the slow tokenizer strips whitespace around it. bos/eos keep their
  // AddedToken(lstrip=False, rstrip=False).
  push(idOf(eos), eos, false, true);
  push(idOf(bos), bos, false, true);
  push(idOf(pad), pad, true, false);
  push(base, IMAGE_TOKEN, true, true);
  push(base + 1, RET_TOKEN, true, false);

  const addBos = config.add_bos_token ?? true;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: addBos ? [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }] : [{ Sequence: { id: 'A', type_id: 0 } }],
      pair: addBos
        ? [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }]
        : [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { [bos]: { id: bos, ids: [idOf(bos)], tokens: [bos] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: content(undefined, eos),
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  } as TokenizerJson;
}

/**
 * Writes `outFile` and checks it loads; returns the ids the manifest records.
 * Called by the converter (src/convert/convert.ts).
 */
export async function writeTokenizerJson(optDir: string, outFile: string): Promise<TokenizerJsonInfo> {
  const json = await buildTokenizerJson(optDir);
  const tokenizer = Tokenizer.fromJson(json, outFile);
  await writeFile(outFile, JSON.stringify(json));
  const id = (tok: string): number => tokenizer.tokenToId(tok)!;
  const newline = tokenizer.encode('\n', { addSpecialTokens: false });
  if (newline.length !== 1) throw new Error(`the tokenizer splits '\\n' into ${newline.length} tokens`);
  const bos = (json.post_processor?.special_tokens ? Object.values(json.post_processor.special_tokens)[0]?.ids[0] : undefined) ?? id('</s>');
  return {
    vocabSize: tokenizer.size,
    bosId: bos,
    eosId: id('</s>'),
    // FROMAGe sets pad = eos.
    padId: id('</s>'),
    imageId: id(IMAGE_TOKEN),
    retId: id(RET_TOKEN),
    newlineId: newline[0],
  };
}
