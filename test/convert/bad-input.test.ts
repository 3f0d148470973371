/**
 * Conversions a user can get wrong: each fails with an error naming the file and the cause,
 * and leaves neither a bundle nor a temporary directory behind.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { convertBundle, type ConvertOptions } from '../../src/convert/convert.ts';
import { ConvertError } from '../../src/convert/graphs/weights.ts';
import { writeStoredZip } from '../../src/convert/readers/torch-zip-writer.ts';
import { PickleBytes } from './readers/helpers.ts';
import { assembleDir, cleanupTemp, CLIP_DIR, FROMAGE_VIS1, OPT_DIR, optTokenizerFiles } from './helpers.ts';

afterAll(cleanupTemp);

const SHARDS = ['pytorch_model-00001-of-00003.bin', 'pytorch_model-00002-of-00003.bin', 'pytorch_model-00003-of-00003.bin'];

function optFiles(): Record<string, string> {
  const files: Record<string, string> = { ...optTokenizerFiles(), 'config.json': join(OPT_DIR, 'config.json'), 'pytorch_model.bin.index.json': join(OPT_DIR, 'pytorch_model.bin.index.json') };
  for (const s of SHARDS) files[s] = join(OPT_DIR, s);
  return files;
}

/** Writes `content` into a fresh temp dir and returns its path (to be symlinked in). */
async function tempFile(name: string, content: string | Uint8Array): Promise<string> {
  const dir = await assembleDir({});
  await writeFile(join(dir, name), content);
  return join(dir, name);
}

/** Runs a conversion expected to fail; checks nothing bundle-like is left in the parent. */
async function expectFailure(o: Partial<ConvertOptions>, ...patterns: RegExp[]): Promise<void> {
  const parent = await assembleDir({});
  const outDir = join(parent, 'bundle');
  const err = await convertBundle({
    optDir: OPT_DIR,
    clipDir: CLIP_DIR,
    fromageDir: FROMAGE_VIS1,
    outDir,
    weights: 'fp32',
    progress: { silent: true },
    ...o,
  }).then(
    () => undefined,
    (e: unknown) => e,
  );
  if (process.env.SHOW_ERRORS) console.log((err as Error).message);
  expect(err).toBeInstanceOf(ConvertError);
  for (const p of patterns) expect((err as Error).message).toMatch(p);
  expect(await readdir(parent)).toEqual([]);
}

describe('convert rejects bad input cleanly', () => {
  it('a FROMAGe checkpoint whose pickle names a forbidden global: refused, nothing executed, nothing left', async () => {
    const evil = new PickleBytes().proto(2).global('os', 'system').str('touch /tmp/pwned-by-fromage-test').op(0x85, 0x52, 0x2e).bytes();
    const ckpt = await tempFile('pretrained_ckpt.pth.tar', new Uint8Array());
    await writeStoredZip(ckpt, [{ name: 'archive/data.pkl', bytes: evil }]);
    const fromageDir = await assembleDir({ 'model_args.json': join(FROMAGE_VIS1, 'model_args.json'), 'pretrained_ckpt.pth.tar': ckpt });
    await expectFailure({ fromageDir }, /pretrained_ckpt\.pth\.tar/, /os\.system/, /malicious/);
    expect(existsSync('/tmp/pwned-by-fromage-test')).toBe(false);
  });

  it('missing vocab.json', async () => {
    const files = optFiles();
    delete files['vocab.json'];
    await expectFailure({ optDir: await assembleDir(files) }, /vocab\.json/, /not found/);
  });

  it('missing OPT config.json', async () => {
    const files = optFiles();
    delete files['config.json'];
    await expectFailure({ optDir: await assembleDir(files) }, /opt.*config\.json|config\.json/, /file not found/);
  });

  it('missing FROMAGe checkpoint', async () => {
    const fromageDir = await assembleDir({ 'model_args.json': join(FROMAGE_VIS1, 'model_args.json') });
    await expectFailure({ fromageDir }, /pretrained_ckpt\.pth\.tar/, /not found/);
  });

  it('a tensor whose shape does not match config.json names the shard and the tensor', async () => {
    const cfg = JSON.parse(await readFile(join(OPT_DIR, 'config.json'), 'utf8')) as Record<string, unknown>;
    cfg.ffn_dim = 128;
    const files = { ...optFiles(), 'config.json': await tempFile('config.json', JSON.stringify(cfg)) };
    await expectFailure({ optDir: await assembleDir(files) }, /pytorch_model-0000\d-of-00003\.bin/, /fc1\.weight/, /\[256, 64\]/, /implies \[128, 64\]/);
  });

  it('an OPT with project_in/project_out (word_embed_proj_dim != hidden_size) is refused', async () => {
    const cfg = JSON.parse(await readFile(join(OPT_DIR, 'config.json'), 'utf8')) as Record<string, unknown>;
    cfg.word_embed_proj_dim = 32;
    const files = { ...optFiles(), 'config.json': await tempFile('config.json', JSON.stringify(cfg)) };
    await expectFailure({ optDir: await assembleDir(files) }, /word_embed_proj_dim 32/, /project_in/);
  });

  it('n_visual_tokens in model_args.json that does not fit the FROMAGe checkpoint', async () => {
    const args = JSON.parse(await readFile(join(FROMAGE_VIS1, 'model_args.json'), 'utf8')) as Record<string, unknown>;
    args.n_visual_tokens = 4;
    const fromageDir = await assembleDir({
      'model_args.json': await tempFile('model_args.json', JSON.stringify(args)),
      'pretrained_ckpt.pth.tar': join(FROMAGE_VIS1, 'pretrained_ckpt.pth.tar'),
    });
    await expectFailure({ fromageDir }, /pretrained_ckpt\.pth\.tar/, /visual_embeddings\.weight/);
  });

  it('a truncated shard', async () => {
    const bytes = await readFile(join(OPT_DIR, SHARDS[1]));
    const files = { ...optFiles(), [SHARDS[1]]: await tempFile(SHARDS[1], bytes.subarray(0, bytes.length >> 1)) };
    await expectFailure({ optDir: await assembleDir(files) }, new RegExp(SHARDS[1]));
  });

  it('an index json naming a missing shard', async () => {
    const files = optFiles();
    delete files[SHARDS[2]];
    await expectFailure({ optDir: await assembleDir(files) }, /pytorch_model\.bin\.index\.json/, new RegExp(SHARDS[2]));
  });

  it('a tokenizer larger than the checkpoint vocabulary', async () => {
    const vocab = JSON.parse(await readFile(join(OPT_DIR, 'vocab.json'), 'utf8')) as Record<string, number>;
    const n = Object.keys(vocab).length;
    for (let i = 0; i < 10; i++) vocab[`extra${i}`] = n + i;
    const files = { ...optFiles(), 'vocab.json': await tempFile('vocab.json', JSON.stringify(vocab)) };
    await expectFailure({ optDir: await assembleDir(files) }, /vocab\.json/, /306 tokens/, /300 rows/);
  });

  it('a retrieval_token_idx that is not the tokenizer [RET] id', async () => {
    const args = JSON.parse(await readFile(join(FROMAGE_VIS1, 'model_args.json'), 'utf8')) as Record<string, unknown>;
    args.retrieval_token_idx = 50266;
    const fromageDir = await assembleDir({
      'model_args.json': await tempFile('model_args.json', JSON.stringify(args)),
      'pretrained_ckpt.pth.tar': join(FROMAGE_VIS1, 'pretrained_ckpt.pth.tar'),
    });
    await expectFailure({ fromageDir }, /model_args\.json/, /retrieval_token_idx 50266/);
  });

  it('an invalid block size', async () => {
    await expectFailure({ weights: 'int4', blockSize: 24 }, /--block-size 24/);
  });

  it('an existing, non-empty output directory is left alone', async () => {
    const outDir = await assembleDir({ 'keep.txt': join(OPT_DIR, 'config.json') });
    const err = await convertBundle({ optDir: OPT_DIR, clipDir: CLIP_DIR, fromageDir: FROMAGE_VIS1, outDir, weights: 'fp32', progress: { silent: true } }).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/already exists/);
    expect(await readdir(outDir)).toEqual(['keep.txt']);
  });
});
