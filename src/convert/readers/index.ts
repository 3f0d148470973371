/**
 * Entry point of the checkpoint readers: `openCheckpoint(pathOrDir)` picks the reader for a
 * file (torch zip, safetensors, or a sharded *.index.json) or a hub-layout directory and
 * returns a lazy TensorSource. Also `sha256File` for the manifest's provenance.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import type { TensorSource } from '../tensor-source.ts';
import { CheckpointError } from './errors.ts';
import { FileTensorSource, type TensorEntry } from './file-tensor-source.ts';
import { RandomAccessFile } from './random-access.ts';
import { looksLikeSafetensors, readSafetensorsEntries } from './safetensors.ts';
import { readTorchZipEntries } from './torch-zip.ts';
import { isZipMagic } from './zip.ts';

export { CheckpointError } from './errors.ts';
export type { TensorEntry } from './file-tensor-source.ts';

/** What a hub directory may hold, in the order HF from_pretrained prefers them. */
export const CHECKPOINT_CANDIDATES = [
  'model.safetensors.index.json',
  'model.safetensors',
  'pytorch_model.bin.index.json',
  'pytorch_model.bin',
  'pretrained_ckpt.pth.tar',
] as const;

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** Opens a checkpoint file, directory (hub layout) or shard index json. */
export async function openCheckpoint(pathOrDir: string): Promise<TensorSource> {
  let info;
  try {
    info = await stat(pathOrDir);
  } catch {
    throw new CheckpointError(pathOrDir, 'no such file or directory');
  }
  if (info.isDirectory()) {
    for (const name of CHECKPOINT_CANDIDATES) {
      const candidate = join(pathOrDir, name);
      if (await isFile(candidate)) return openCheckpoint(candidate);
    }
    throw new CheckpointError(pathOrDir, `directory holds no checkpoint (looked for ${CHECKPOINT_CANDIDATES.join(', ')})`);
  }
  if (pathOrDir.endsWith('.index.json')) return openShardedCheckpoint(pathOrDir);
  const file = await RandomAccessFile.open(pathOrDir);
  try {
    const entries = await readEntries(file);
    return new FileTensorSource(pathOrDir, entries, new Map([[file.path, file]]));
  } catch (err) {
    await file.close();
    throw err;
  }
}

/** Sniffs the format from the first bytes, not the extension (hub names are not reliable). */
async function readEntries(file: RandomAccessFile): Promise<TensorEntry[]> {
  const head = await file.read(0, Math.min(16, file.size));
  if (isZipMagic(head)) return readTorchZipEntries(file);
  if (looksLikeSafetensors(head, file.size) || file.path.endsWith('.safetensors')) return readSafetensorsEntries(file);
  if (head[0] === 0x80) {
    throw new CheckpointError(
      file.path,
      'legacy (pre-1.6) torch.save format is not supported; re-save it with a current torch (torch.save(torch.load(f), f))',
    );
  }
  throw new CheckpointError(file.path, 'unrecognised checkpoint format (expected a PyTorch zip checkpoint or safetensors)');
}

const indexSchema = z.object({
  metadata: z.record(z.string(), z.unknown()).optional(),
  weight_map: z.record(z.string(), z.string()),
});

/** `pytorch_model.bin.index.json` / `model.safetensors.index.json`: {weight_map: {tensor: shard}}. */
export async function openShardedCheckpoint(indexPath: string): Promise<TensorSource> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(indexPath, 'utf8'));
  } catch (err) {
    throw new CheckpointError(indexPath, `cannot read shard index: ${(err as Error).message}`);
  }
  const index = indexSchema.safeParse(parsed);
  if (!index.success) throw new CheckpointError(indexPath, 'shard index has no valid "weight_map" object of tensor name -> shard file');
  const weightMap = index.data.weight_map;
  const shardNames = [...new Set(Object.values(weightMap))].sort();
  const dir = dirname(indexPath);
  for (const shard of shardNames) {
    // Shards are siblings of the index; a path in the index must not reach elsewhere.
    if (shard !== basename(shard) || shard === '..' || shard === '.') {
      throw new CheckpointError(indexPath, `shard name '${shard}' is not a plain file name`);
    }
    if (!(await isFile(join(dir, shard)))) {
      throw new CheckpointError(indexPath, `names shard '${shard}', which is missing from ${dir} (incomplete download?)`);
    }
  }
  const handles = new Map<string, RandomAccessFile>();
  try {
    const entries: TensorEntry[] = [];
    for (const shard of shardNames) {
      const file = await RandomAccessFile.open(join(dir, shard));
      handles.set(file.path, file);
      const shardEntries = await readEntries(file);
      const present = new Set(shardEntries.map((e) => e.name));
      for (const [tensor, owner] of Object.entries(weightMap)) {
        if (owner === shard && !present.has(tensor)) {
          throw new CheckpointError(file.path, `shard lacks tensor '${tensor}', which ${basename(indexPath)} places in it`);
        }
      }
      entries.push(...shardEntries);
    }
    return new FileTensorSource(indexPath, entries, handles);
  } catch (err) {
    await Promise.all([...handles.values()].map((h) => h.close()));
    throw err;
  }
}

/** Streaming sha256 (hex) of a file; `onProgress(bytesDone, totalBytes)` per chunk. */
export async function sha256File(path: string, onProgress?: (done: number, total: number) => void): Promise<string> {
  let total: number;
  try {
    total = (await stat(path)).size;
  } catch {
    throw new CheckpointError(path, 'no such file');
  }
  const hash = createHash('sha256');
  let done = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) {
    hash.update(chunk as Buffer);
    done += (chunk as Buffer).length;
    onProgress?.(done, total);
  }
  return hash.digest('hex');
}
