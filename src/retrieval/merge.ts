/**
 * `fromage index merge A B ... --out C`: one index holding the rows of several (CC3M plus a
 * community gallery, or galleries built in parts). Rows are copied in order, already
 * normalized; rows that `prune` marked dead are left out.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createProgress } from '../progress.ts';
import { IndexError, type IndexManifest } from './format.ts';
import { readDeadMap, readManifest, RowFile, UrlTable } from './index-files.ts';
import { IndexWriter } from './index-writer.ts';
import { withSearchGraph } from './quantized-search.ts';

const CHUNK_ROWS = 16_384;

export async function mergeIndexes(dirs: readonly string[], out: string, options: { quantize?: boolean; silent?: boolean } = {}): Promise<IndexManifest> {
  if (dirs.length < 2) throw new IndexError('give at least two indexes to merge');
  const outAbs = path.resolve(out);
  if (dirs.some((d) => path.resolve(d) === outAbs)) throw new IndexError(`the output ${out} is also an input; write the merge to a new directory`);
  const manifests = dirs.map((d) => readManifest(d));
  const dim = manifests[0].dim;
  manifests.forEach((m, i) => {
    if (m.dim !== dim) throw new IndexError(`${dirs[i]} holds ${m.dim}-d rows but ${dirs[0]} holds ${dim}-d rows; indexes from different models cannot be merged`);
  });
  const scales = new Set(manifests.map((m) => m.logit_scale));
  const roots = new Set(manifests.map((m) => m.gallery_root).filter((r): r is string => r !== undefined));
  if (roots.size > 1) throw new IndexError(`the indexes are local galleries in different folders (${[...roots].join(', ')}); give them public URLs with --base-url when building, then merge`);
  const total = manifests.reduce((n, m) => n + m.rows, 0);
  fs.mkdirSync(out, { recursive: true });
  const writer = IndexWriter.create(out, dim, {
    source: `merge of ${dirs.map((d) => path.resolve(d)).join(', ')}`,
    ...(scales.size === 1 && manifests[0].logit_scale !== undefined ? { logitScale: manifests[0].logit_scale } : {}),
    ...(roots.size === 1 ? { galleryRoot: [...roots][0] } : {}),
  });
  const progress = createProgress('merge', total, { unit: 'rows', silent: options.silent });
  let done = 0;
  try {
    for (let i = 0; i < dirs.length; i++) {
      const m = manifests[i];
      const rows = RowFile.open(dirs[i], m.rows, dim);
      const urls = UrlTable.load(dirs[i], m.rows);
      const dead = readDeadMap(dirs[i], m.rows);
      try {
        for (let first = 0; first < m.rows; first += CHUNK_ROWS) {
          const n = Math.min(CHUNK_ROWS, m.rows - first);
          const chunk = rows.readRange(first, n);
          for (let r = 0; r < n; r++) {
            if (dead?.[first + r] === 1) continue;
            writer.appendNormalized(chunk.subarray(r * dim, (r + 1) * dim), urls.get(first + r));
          }
          done += n;
          progress.update(done);
        }
      } finally {
        rows.close();
      }
    }
  } catch (err) {
    writer.abort();
    throw err;
  } finally {
    progress.stop();
  }
  return withSearchGraph(out, writer.finish(), { quantize: options.quantize, silent: options.silent });
}
