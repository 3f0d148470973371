/**
 * `fromage index import`: FROMAGe's cc3m_embeddings.pkl (`{'paths': [url...], 'embeddings':
 * (N, D) array}`) into an index directory. The embeddings come as a 2-D float32 array, a list
 * of 1-D arrays, or float16; large arrays stay in the file (lazy bytes) and are streamed by
 * row blocks, so a 2.7 GB pickle never sits in memory. Uses the converter's safe pickle
 * reader: no code from the file runs.
 */
import { readPickleFile, isNumpyArray, isPickleDict, type NumpyArray, type PickleValue } from '../convert/readers/pickle.ts';
import { iterateFloat32Rows, numpyToFloat32 } from '../convert/readers/numpy.ts';
import { createProgress } from '../progress.ts';
import fs from 'node:fs';
import { IndexError, type IndexManifest } from './format.ts';
import { IndexWriter } from './index-writer.ts';
import { withSearchGraph } from './quantized-search.ts';
import { findUrlProblems, formatUrlProblems } from './url-check.ts';

export interface ImportOptions {
  logitScale?: number;
  /** Build the quantized search graph too (default true). */
  quantize?: boolean;
  bits?: 4 | 8;
  silent?: boolean;
  /** Replace what is already in `outDir` (default: refuse a non-empty directory). */
  force?: boolean;
  /** Told about rows whose URL the fetcher can never load (default: nowhere). */
  warn?: (message: string) => void;
}

function fail(file: string, why: string): never {
  throw new IndexError(`${file}: ${why}`);
}

export async function importPickle(file: string, outDir: string, options: ImportOptions = {}): Promise<IndexManifest> {
  // Checked before the (long) read: an existing index is someone's work, replaced only on request.
  const existing = fs.statSync(outDir, { throwIfNoEntry: false });
  if (existing && !existing.isDirectory()) throw new IndexError(`--out ${outDir} is a file; give a directory for the index`);
  if (existing && !options.force && fs.readdirSync(outDir).length > 0)
    throw new IndexError(`${outDir} already exists and is not empty; pass --force to replace it, or choose another --out`);
  const root = readPickleFile(file, { lazyBytesOver: 1 << 20 });
  if (!isPickleDict(root)) fail(file, "expected a dict with 'paths' and 'embeddings' (FROMAGe's cc3m_embeddings.pkl format)");
  const paths = root.get('paths');
  const embeddings = root.get('embeddings');
  if (!Array.isArray(paths)) fail(file, "has no 'paths' list");
  if (embeddings === undefined) fail(file, "has no 'embeddings' entry");
  for (let i = 0; i < paths.length; i++) if (typeof paths[i] !== 'string') fail(file, `paths[${i}] is not a string`);
  const urls = paths as string[];

  const arrays: NumpyArray[] = [];
  let rows: number;
  let dim: number;
  if (isNumpyArray(embeddings)) {
    if (embeddings.shape.length !== 2) fail(file, `'embeddings' has shape [${embeddings.shape.join(', ')}]; expected (N, D)`);
    [rows, dim] = embeddings.shape;
    arrays.push(embeddings);
  } else if (Array.isArray(embeddings)) {
    // np.concatenate of a list of 1-D arrays (or (1, D) rows), as FROMAGe's loader does.
    rows = 0;
    dim = -1;
    for (let i = 0; i < embeddings.length; i++) {
      const a: PickleValue = embeddings[i];
      if (!isNumpyArray(a)) fail(file, `embeddings[${i}] is not a numpy array`);
      const d = a.shape[a.shape.length - 1];
      const n = a.shape.length === 1 ? 1 : a.shape[0];
      if (a.shape.length > 2) fail(file, `embeddings[${i}] has shape [${a.shape.join(', ')}]; expected 1-D rows`);
      if (dim >= 0 && d !== dim) fail(file, `embeddings[${i}] has ${d} values, earlier rows have ${dim}`);
      dim = d;
      rows += n;
      arrays.push(a);
    }
    if (dim < 0) dim = 0;
  } else {
    fail(file, "'embeddings' is neither a numpy array nor a list of arrays");
  }
  if (rows !== urls.length)
    fail(file, `has ${urls.length} paths but ${rows} embedding rows; they must match one to one (is the file complete?)`);
  if (rows === 0) fail(file, 'holds no rows');
  const problems = findUrlProblems(urls);
  if (problems.count > 0) options.warn?.(formatUrlProblems(urls.length, problems));
  if (!(dim > 0)) fail(file, 'embeddings have zero width');

  const writer = IndexWriter.create(outDir, dim, { source: file, logitScale: options.logitScale });
  const progress = createProgress('import', rows, { unit: 'rows', silent: options.silent });
  try {
    let row = 0;
    for (const arr of arrays) {
      if (arrays.length > 1 && arr.shape.length === 1) {
        const v = await numpyToFloat32(arr, file);
        writer.append(v, urls[row++]);
        if ((row & 0xffff) === 0) progress.update(row);
        continue;
      }
      for await (const block of iterateFloat32Rows(arr, file, 65_536)) {
        writer.appendBlock(block.data, block.rows, urls.slice(row, row + block.rows));
        row += block.rows;
        progress.update(row);
      }
    }
    progress.update(row);
  } catch (err) {
    writer.abort();
    throw err;
  } finally {
    progress.stop();
  }
  return withSearchGraph(outDir, writer.finish(), { quantize: options.quantize, bits: options.bits, silent: options.silent });
}
