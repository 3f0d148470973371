/**
 * OPT's tokenizer as FROMAGe sets it up (transformers' slow GPT2Tokenizer after
 * `pad_token = eos_token`, `<|image|>` as cls token and `[RET]` added), built from the bundle's
 * tokenizer.json. Reproduces the slow tokenizer's quirks on purpose: added tokens split the
 * text first and may strip the whitespace next to them; decoding puts every added token that
 * is not in the BPE vocabulary in its own chunk and joins chunks with single spaces; then
 * `clean_up_tokenization` runs.
 */
import { readFile } from 'node:fs/promises';
import { BytePairMerger } from './bpe.ts';
import { fromByteLevel, toByteLevel } from './byte-level.ts';
import { gpt2Pretokenize, pyLstrip, pyRstrip } from './pretokenize.ts';
import { tokenizerJsonSchema, type TokenizerJson } from './tokenizer-json.ts';

export interface EncodeOptions {
  /** Prepend the post-processor's token (`</s>` for OPT), as `add_special_tokens=True`. Default true. */
  readonly addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop tokens marked special (`</s>`, `<|image|>`). Default false. */
  readonly skipSpecialTokens?: boolean;
  /** transformers' `clean_up_tokenization` (` .` -> `.` ...). Default true. */
  readonly cleanUpTokenizationSpaces?: boolean;
}

interface AddedToken {
  readonly id: number;
  readonly content: string;
  readonly lstrip: boolean;
  readonly rstrip: boolean;
  readonly special: boolean;
}

export class TokenizerFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenizerFormatError';
  }
}

export class Tokenizer {
  private readonly vocab: ReadonlyMap<string, number>;
  private readonly idToToken: readonly string[];
  private readonly merger: BytePairMerger;
  private readonly added: ReadonlyMap<string, AddedToken>;
  private readonly addedById: ReadonlyMap<number, AddedToken>;
  /** Added tokens sorted longest first, so the earliest match takes the longest token. */
  private readonly addedContents: readonly string[];
  private readonly specialIds: ReadonlySet<number>;
  private readonly prefixIds: readonly number[];
  private readonly unkId: number | undefined;
  readonly size: number;

  constructor(json: TokenizerJson) {
    const vocab = new Map(Object.entries(json.model.vocab));
    this.vocab = vocab;
    const merges = json.model.merges.map((m): [string, string] => {
      if (Array.isArray(m)) return m;
      const sp = m.indexOf(' ');
      if (sp <= 0) throw new TokenizerFormatError(`tokenizer.json: malformed merge ${JSON.stringify(m)}`);
      return [m.slice(0, sp), m.slice(sp + 1)];
    });
    this.merger = new BytePairMerger(merges);
    const added = new Map<string, AddedToken>();
    for (const t of json.added_tokens) added.set(t.content, t);
    this.added = added;
    this.addedById = new Map([...added.values()].map((t) => [t.id, t]));
    this.addedContents = [...added.keys()].sort((a, b) => b.length - a.length);
    this.specialIds = new Set([...added.values()].filter((t) => t.special).map((t) => t.id));
    // A loop, not Math.max(...): 50k arguments is close to engine limits.
    let maxId = -1;
    for (const id of vocab.values()) if (id > maxId) maxId = id;
    for (const t of added.values()) if (t.id > maxId) maxId = t.id;
    const size = maxId + 1;
    this.size = size;
    const idToToken = new Array<string>(size);
    for (const [tok, id] of vocab) idToToken[id] = tok;
    for (const t of added.values()) idToToken[t.id] ??= t.content;
    this.idToToken = idToToken;
    this.unkId = json.model.unk_token === null ? undefined : vocab.get(json.model.unk_token);
    this.prefixIds = prefixFromTemplate(json);
  }

  static async fromFile(path: string): Promise<Tokenizer> {
    let raw: unknown;
    try {
      raw = JSON.parse(await readFile(path, 'utf8'));
    } catch (err) {
      throw new TokenizerFormatError(`cannot read tokenizer ${path}: ${(err as Error).message}`);
    }
    return Tokenizer.fromJson(raw, path);
  }

  static fromJson(raw: unknown, source = 'tokenizer.json'): Tokenizer {
    const parsed = tokenizerJsonSchema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new TokenizerFormatError(`${source} is not a byte-level BPE tokenizer.json: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
    }
    return new Tokenizer(parsed.data);
  }

  /** Id of a token string (vocabulary entry or added token), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.added.get(token)?.id ?? this.vocab.get(token);
  }

  idToTokenString(id: number): string {
    const tok = this.idToToken[id];
    if (tok === undefined) throw new RangeError(`token id ${id} is outside the vocabulary (size ${this.size})`);
    return tok;
  }

  /** The token strings of `text` (the slow tokenizer's `tokenize`). */
  tokenize(text: string): string[] {
    const pieces = this.splitOnAddedTokens(text);
    const out: string[] = [];
    for (const piece of pieces) {
      if (!piece) continue;
      if (this.added.has(piece)) {
        out.push(piece);
        continue;
      }
      for (const pre of gpt2Pretokenize(piece)) out.push(...this.merger.merge(toByteLevel(pre)));
    }
    return out;
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids = this.tokenize(text).map((t) => {
      const id = this.tokenToId(t) ?? this.unkId;
      if (id === undefined) throw new TokenizerFormatError(`token ${JSON.stringify(t)} has no id and the tokenizer has no unk token`);
      return id;
    });
    return (options.addSpecialTokens ?? true) ? [...this.prefixIds, ...ids] : ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const skip = options.skipSpecialTokens ?? false;
    const chunks: string[] = [];
    let current: string[] = [];
    for (const id of ids) {
      if (skip && this.specialIds.has(id)) continue;
      const token = this.idToTokenString(id);
      // Only added tokens outside the BPE vocabulary are their own chunk (as
      // `added_tokens_encoder` in the slow tokenizer); `</s>` and `<pad>` are byte-level text.
      if (this.addedById.has(id) && !this.vocab.has(token)) {
        if (current.length > 0) chunks.push(fromByteLevel(current));
        current = [];
        chunks.push(token);
      } else {
        current.push(token);
      }
    }
    if (current.length > 0) chunks.push(fromByteLevel(current));
    const text = chunks.join(' ');
    return (options.cleanUpTokenizationSpaces ?? true) ? cleanUpTokenization(text) : text;
  }

  /**
   * Splits on added tokens (earliest match, longest token), then strips the neighbours'
   * whitespace as each token asks. Mutates neighbours in order, like the slow tokenizer, so a
   * neighbour stripped to '' disappears.
   */
  private splitOnAddedTokens(text: string): string[] {
    const parts: string[] = [];
    let start = 0;
    let i = 0;
    while (i < text.length) {
      const match = this.addedContents.find((c) => text.startsWith(c, i));
      if (match === undefined) {
        i++;
        continue;
      }
      if (i > start) parts.push(text.slice(start, i));
      parts.push(match);
      i += match.length;
      start = i;
    }
    if (start < text.length) parts.push(text.slice(start));
    for (let k = 0; k < parts.length; k++) {
      const tok = this.added.get(parts[k]);
      if (!tok) continue;
      if (tok.rstrip && k + 1 < parts.length && parts[k + 1]) parts[k + 1] = pyLstrip(parts[k + 1]);
      if (tok.lstrip && k > 0 && parts[k - 1]) parts[k - 1] = pyRstrip(parts[k - 1]);
    }
    return parts;
  }
}

/** transformers' `PreTrainedTokenizerBase.clean_up_tokenization`, replacement order kept. */
export function cleanUpTokenization(text: string): string {
  return text
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

function prefixFromTemplate(json: TokenizerJson): number[] {
  const pp = json.post_processor;
  if (!pp) return [];
  const ids: number[] = [];
  for (const piece of pp.single) {
    if ('Sequence' in piece) break;
    const special = pp.special_tokens[piece.SpecialToken.id];
    if (!special) throw new TokenizerFormatError(`tokenizer.json: post_processor names unknown special token ${piece.SpecialToken.id}`);
    ids.push(...special.ids);
  }
  return ids;
}
