import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTokenizerJson } from '../../src/convert/tokenizer-json.ts';
import { newlineTruncIndex, postProcess, truncateAtNewline, truncateCaption } from '../../src/model/postprocess.ts';
import { Tokenizer } from '../../src/model/tokenizer/tokenizer.ts';

const FIXTURES = join(import.meta.dirname, '../fixtures');

interface PostCase {
  name: string;
  ids: number[];
  num_words_positive: boolean;
  max_num_rets: number;
  newline_token_id: number;
  trunc_idx: number | null;
  ids_after_truncation: number[];
  all_ret_idx: number[];
  captions_raw: string[];
  return_outputs_text: string[];
}
const fixture = JSON.parse(await readFile(join(FIXTURES, 'reference/postprocess_cases.json'), 'utf8')) as {
  cases: PostCase[];
  truncate_caption: { input: string; output: string }[];
};

const RET = 295;
let dir: string;
let tokenizer: Tokenizer;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fromage-post-'));
  await writeTokenizerJson(join(FIXTURES, 'facebook/opt-6.7b'), join(dir, 'tokenizer.json'));
  tokenizer = await Tokenizer.fromFile(join(dir, 'tokenizer.json'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('truncateCaption', () => {
  it.each(fixture.truncate_caption.map((c) => [JSON.stringify(c.input), c] as const))('%s', (_n, c) => {
    expect(truncateCaption(c.input)).toBe(c.output);
  });
});

describe('post-processing (postprocess_cases.json)', () => {
  it.each(fixture.cases.map((c) => [c.name, c] as const))('%s', (_n, c) => {
    let ids = c.ids;
    if (c.num_words_positive) {
      expect(newlineTruncIndex(ids, c.newline_token_id)).toBe(c.trunc_idx);
      ids = truncateAtNewline(ids, c.newline_token_id);
    }
    expect(ids).toEqual(c.ids_after_truncation);
    const out = postProcess(tokenizer, ids, RET, c.max_num_rets);
    expect(out.retPositions).toEqual(c.all_ret_idx);
    expect(out.captionsRaw).toEqual(c.captions_raw);
    expect(out.outputs.map((o) => (o.kind === 'text' ? o.text : '<images>'))).toEqual(c.return_outputs_text);
  });
});
