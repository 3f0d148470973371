import { cp, mkdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CheckpointError, openCheckpoint } from '../../../src/convert/readers/index.ts';
import { writeStoredZip, writeTorchZipCheckpoint } from '../../../src/convert/readers/torch-zip-writer.ts';
import { fixture, PickleBytes, tempDir } from './helpers.ts';

async function expectOpenError(path: string, ...parts: Array<string | RegExp>): Promise<void> {
  let caught: unknown;
  try {
    const s = await openCheckpoint(path);
    await s.close();
  } catch (err) {
    caught = err;
  }
  expect(caught, `opening ${path} should fail`).toBeInstanceOf(CheckpointError);
  for (const p of parts) expect((caught as Error).message).toMatch(p);
}

async function copyOpt(): Promise<string> {
  const dir = join(await tempDir(), 'opt-6.7b');
  await cp(fixture('facebook', 'opt-6.7b'), dir, { recursive: true });
  return dir;
}

function safetensorsBytes(header: Record<string, unknown>, data: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

describe('bad checkpoints give an error naming the file', () => {
  it('a truncated shard', async () => {
    const dir = await copyOpt();
    const shard = join(dir, 'pytorch_model-00002-of-00003.bin');
    await truncate(shard, Math.floor((await stat(shard)).size / 2));
    await expectOpenError(dir, shard, /truncated/);
    // Cut just the last bytes: the end-of-directory record is gone.
    const dir2 = await copyOpt();
    const shard2 = join(dir2, 'pytorch_model-00003-of-00003.bin');
    await truncate(shard2, (await stat(shard2)).size - 10);
    await expectOpenError(dir2, shard2);
  });

  it('an index json naming a missing shard', async () => {
    const dir = await copyOpt();
    await rm(join(dir, 'pytorch_model-00003-of-00003.bin'));
    await expectOpenError(dir, join(dir, 'pytorch_model.bin.index.json'), "'pytorch_model-00003-of-00003.bin'", /missing/);
  });

  it('an index json placing a tensor in a shard that lacks it', async () => {
    const dir = await copyOpt();
    const indexPath = join(dir, 'pytorch_model.bin.index.json');
    const index = JSON.parse(await readFile(indexPath, 'utf8')) as { weight_map: Record<string, string> };
    index.weight_map['decoder.embed_tokens.weight'] = 'pytorch_model-00002-of-00003.bin';
    await writeFile(indexPath, JSON.stringify(index));
    await expectOpenError(dir, join(dir, 'pytorch_model-00002-of-00003.bin'), "'decoder.embed_tokens.weight'");
  });

  it('an index json that is not JSON, has no weight_map, or names a path outside its directory', async () => {
    const dir = await copyOpt();
    const indexPath = join(dir, 'pytorch_model.bin.index.json');
    await writeFile(indexPath, '{"weight_map": ');
    await expectOpenError(dir, indexPath, /cannot read shard index/);
    await writeFile(indexPath, '{"metadata": {}}');
    await expectOpenError(dir, indexPath, /weight_map/);
    await writeFile(indexPath, JSON.stringify({ weight_map: { a: '../../etc/passwd' } }));
    await expectOpenError(dir, indexPath, /not a plain file name/);
  });

  it('a safetensors header pointing past the end of the file, and other bad headers', async () => {
    const dir = await tempDir();
    const path = join(dir, 'model.safetensors');
    const data = new Uint8Array(16);
    await writeFile(path, safetensorsBytes({ w: { dtype: 'F32', shape: [8], data_offsets: [0, 32] } }, data));
    await expectOpenError(path, path, /past the end/);
    await writeFile(path, safetensorsBytes({ w: { dtype: 'F64', shape: [2], data_offsets: [0, 16] } }, data));
    await expectOpenError(path, path, /unsupported dtype 'F64'/);
    await writeFile(path, safetensorsBytes({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 16] } }, data));
    await expectOpenError(path, path, /needs 12/);
    await writeFile(path, safetensorsBytes({ w: { dtype: 'F32', shape: 'x', data_offsets: [0, 16] } }, data));
    await expectOpenError(path, path, /malformed entry/);
    const header = safetensorsBytes({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, data);
    new DataView(header.buffer).setUint32(0, 1 << 20, true);
    await writeFile(path, header);
    await expectOpenError(path, path, /header/);
    // A truncated copy of the real CLIP safetensors.
    await cp(fixture('openai', 'clip-vit-large-patch14', 'model.safetensors'), path);
    await truncate(path, 200_000);
    await expectOpenError(path, path, /past the end/);
  });

  it('a zip that is not a torch checkpoint, and a torch zip with a compressed-looking or missing storage', async () => {
    const dir = await tempDir();
    const path = join(dir, 'pytorch_model.bin');
    await writeStoredZip(path, [{ name: 'docs/readme.txt', bytes: new TextEncoder().encode('hello') }]);
    await expectOpenError(path, path, /not a PyTorch checkpoint/);
    await writeStoredZip(path, [{ name: 'a/data.pkl', bytes: new PickleBytes().proto(2).op(0x7d, 0x2e).bytes() }]);
    await expectOpenError(path, path, /no tensors/);
  });

  it('a torch checkpoint whose data.pkl names a forbidden global', async () => {
    const dir = await tempDir();
    const path = join(dir, 'pytorch_model.bin');
    const evil = new PickleBytes().proto(2).global('os', 'system').str('rm -rf /').op(0x85, 0x52, 0x2e).bytes();
    await writeStoredZip(path, [{ name: 'archive/data.pkl', bytes: evil }]);
    await expectOpenError(path, path, 'os.system', /malicious/);
  });

  it('a storage member missing from the archive', async () => {
    const dir = await tempDir();
    const good = join(dir, 'good.bin');
    await writeTorchZipCheckpoint(good, [{ name: 'w', dtype: 'float32', shape: [2] }], () => [new Uint8Array(8)], { folder: 'good' });
    // Re-pack only data.pkl: the tensor's storage data/0 is gone.
    const s = await openCheckpoint(good);
    await s.close();
    const zipBytes = await readFile(good);
    const pklStart = zipBytes.indexOf(Buffer.from([0x80, 2]));
    const pklEnd = zipBytes.indexOf(Buffer.from([0x75, 0x2e]), pklStart) + 2;
    const bad = join(dir, 'bad.bin');
    await writeStoredZip(bad, [{ name: 'good/data.pkl', bytes: zipBytes.subarray(pklStart, pklEnd) }]);
    await expectOpenError(bad, bad, /storage '0'.*missing/);
  });

  it('missing paths, empty directories, legacy torch pickles and unknown formats', async () => {
    const dir = await tempDir();
    await expectOpenError(join(dir, 'nope'), join(dir, 'nope'), /no such file/);
    await mkdir(join(dir, 'empty'));
    await expectOpenError(join(dir, 'empty'), /holds no checkpoint/);
    const legacy = join(dir, 'legacy.bin');
    await writeFile(legacy, Uint8Array.of(0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8));
    await expectOpenError(legacy, legacy, /legacy/);
    const junk = join(dir, 'junk.bin');
    await writeFile(junk, 'this is not a checkpoint at all');
    await expectOpenError(junk, junk, /unrecognised/);
    const empty = join(dir, 'empty.bin');
    await writeFile(empty, '');
    await expectOpenError(empty, empty);
  });
});
