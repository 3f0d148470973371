import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildTokenizerJson, writeTokenizerJson } from '../../src/convert/tokenizer-json.ts';
import { Tokenizer, TokenizerFormatError } from '../../src/model/tokenizer/tokenizer.ts';

const FIXTURES = join(import.meta.dirname, '../fixtures');
const OPT_DIR = join(FIXTURES, 'facebook/opt-6.7b');

interface EncodeCase {
  text: string;
  ids: number[];
  ids_no_special: number[];
  tokens: string[];
  decode_skip_special: string;
  decode_no_special_ids_skip_special: string;
  decode_keep_special: string;
  decode_skip_special_no_cleanup: string;
}
interface DecodeCase {
  ids: number[];
  tokens: string[];
  decode_skip_special: string;
  decode_keep_special: string;
  decode_skip_special_no_cleanup: string;
}
interface TokenizerCases {
  meta: { len_tokenizer: number; newline_token_id: number; cls_token_id: number; ret_token_id: number };
  encode: EncodeCase[];
  decode: DecodeCase[];
}

const cases = JSON.parse(await readFile(join(FIXTURES, 'reference/tokenizer_cases.json'), 'utf8')) as TokenizerCases;

let dir: string;
let tokenizer: Tokenizer;
let info: Awaited<ReturnType<typeof writeTokenizerJson>>;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fromage-tok-'));
  info = await writeTokenizerJson(OPT_DIR, join(dir, 'tokenizer.json'));
  // Round trip: the runtime loads what the converter wrote.
  tokenizer = await Tokenizer.fromFile(join(dir, 'tokenizer.json'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('writeTokenizerJson', () => {
  it('reports the ids the manifest records', () => {
    expect(info).toEqual({
      vocabSize: cases.meta.len_tokenizer,
      bosId: 2,
      eosId: 2,
      padId: 2,
      imageId: cases.meta.cls_token_id,
      retId: cases.meta.ret_token_id,
      newlineId: cases.meta.newline_token_id,
    });
    expect(tokenizer.size).toBe(296);
  });

  it('writes a standard tokenizers-format file', async () => {
    const json = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
    expect(json.version).toBe('1.0');
    expect((json.model as { type: string }).type).toBe('BPE');
    expect((json.model as { merges: string[] }).merges).toHaveLength(34);
  });

  it('refuses a vocabulary that already holds [RET]', async () => {
    const bad = await mkdtemp(join(tmpdir(), 'fromage-tokbad-'));
    try {
      const vocab = JSON.parse(await readFile(join(OPT_DIR, 'vocab.json'), 'utf8')) as Record<string, number>;
      vocab['[RET]'] = Object.keys(vocab).length;
      await writeFile(join(bad, 'vocab.json'), JSON.stringify(vocab));
      await writeFile(join(bad, 'merges.txt'), await readFile(join(OPT_DIR, 'merges.txt')));
      await expect(buildTokenizerJson(bad)).rejects.toThrow(/already contains FROMAGe's added tokens/);
    } finally {
      await rm(bad, { recursive: true, force: true });
    }
  });
});

describe('Tokenizer.encode (tokenizer_cases.json)', () => {
  it.each(cases.encode.map((c) => [JSON.stringify(c.text), c] as const))('%s', (_name, c) => {
    expect(tokenizer.tokenize(c.text)).toEqual(c.tokens);
    expect(tokenizer.encode(c.text)).toEqual(c.ids);
    expect(tokenizer.encode(c.text, { addSpecialTokens: false })).toEqual(c.ids_no_special);
    expect(tokenizer.decode(c.ids, { skipSpecialTokens: true })).toBe(c.decode_skip_special);
    expect(tokenizer.decode(c.ids_no_special, { skipSpecialTokens: true })).toBe(c.decode_no_special_ids_skip_special);
    expect(tokenizer.decode(c.ids)).toBe(c.decode_keep_special);
    expect(tokenizer.decode(c.ids, { skipSpecialTokens: true, cleanUpTokenizationSpaces: false })).toBe(c.decode_skip_special_no_cleanup);
  });
});

describe('Tokenizer.decode (tokenizer_cases.json)', () => {
  it.each(cases.decode.map((c) => [JSON.stringify(c.ids), c] as const))('%s', (_name, c) => {
    expect(c.ids.map((id) => tokenizer.idToTokenString(id))).toEqual(c.tokens);
    expect(tokenizer.decode(c.ids, { skipSpecialTokens: true })).toBe(c.decode_skip_special);
    expect(tokenizer.decode(c.ids)).toBe(c.decode_keep_special);
    expect(tokenizer.decode(c.ids, { skipSpecialTokens: true, cleanUpTokenizationSpaces: false })).toBe(c.decode_skip_special_no_cleanup);
  });

  it('rejects an id outside the vocabulary', () => {
    expect(() => tokenizer.decode([296])).toThrow(RangeError);
  });
});

describe('Tokenizer.fromJson', () => {
  it('names the bad field of a malformed tokenizer.json', () => {
    expect(() => Tokenizer.fromJson({ version: '1.0', added_tokens: [] }, 'x/tokenizer.json')).toThrow(TokenizerFormatError);
    expect(() => Tokenizer.fromJson({ version: '1.0', added_tokens: [] }, 'x/tokenizer.json')).toThrow(/x\/tokenizer.json.*pre_tokenizer/);
  });
});
