/** Shared fixture access for the retrieval tests. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { IndexWriter } from '../../src/retrieval/index-writer.ts';

export const FIXTURES = path.resolve(import.meta.dirname, '../fixtures');

interface RefTensor {
  dtype: string;
  shape: number[];
  data: number[];
}

let tensors: Record<string, RefTensor> | undefined;

export function refTensor(name: string): RefTensor {
  tensors ??= (JSON.parse(fs.readFileSync(path.join(FIXTURES, 'reference/reference.json'), 'utf8')) as { tensors: Record<string, RefTensor> }).tensors;
  const t = tensors[name];
  if (!t) throw new Error(`reference tensor ${name} missing`);
  return t;
}

export interface RefRet {
  emb: string;
  scores: string;
  scores_after_downweight: string;
  seen_before: number[];
  top_candidates: number[];
  attempted: number[];
  returned: number[];
}

export interface RefCase {
  kwargs: { max_img_per_ret: number };
  rets: RefRet[];
}

export function refCase(variant: 'vis1' | 'vis4', name: string): RefCase {
  const all = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'reference/fromage_cases.json'), 'utf8')) as Record<string, Record<string, RefCase>>;
  return all[variant][name];
}

export function refIndexPaths(): { paths: string[]; broken_indices: number[] } {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, 'reference/index.json'), 'utf8')) as { paths: string[]; broken_indices: number[] };
}

export function tmpDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `fromage-${prefix}-`));
}

/** Temp dirs a test file makes, removed together by `cleanup` (call it in afterAll). */
export function tempDirs(): { dir: (prefix: string) => string; cleanup: () => void } {
  const made: string[] = [];
  return {
    dir: (prefix) => {
      const d = tmpDir(prefix);
      made.push(d);
      return d;
    },
    cleanup: () => {
      for (const d of made.splice(0)) fs.rmSync(d, { recursive: true, force: true });
    },
  };
}

/** An index written straight from the reference's raw embedding matrix (no pickle reader). */
export function writeReferenceIndex(dir: string, variant: 'vis1' | 'vis4' = 'vis1', port?: number): void {
  const emb = refTensor(`index.${variant}.embeddings`);
  const [n, d] = emb.shape;
  const { paths } = refIndexPaths();
  const w = IndexWriter.create(dir, d, { source: 'reference.json', logitScale: refTensor(`${variant}.logit_scale`).data[0] });
  for (let i = 0; i < n; i++) w.append(emb.data.slice(i * d, (i + 1) * d), port ? paths[i].replace('PORT', String(port)) : paths[i]);
  w.finish();
}
