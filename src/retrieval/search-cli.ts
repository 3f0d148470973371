/**
 * `fromage index search`: a stable, scriptable search. The vector file holds one query vector
 * or a list of them (raw, unnormalized); --json prints
 * {"results": [[{row, url, score}, ...] per query], "latency_ms": {p50, p99}}
 * with latency over `repeat` runs of each query on the already-loaded index.
 */
import fs from 'node:fs';
import { z } from 'zod';
import { MultiIndex, type IndexMode } from './embedding-index.ts';
import { IndexError } from './format.ts';

const vectorFile = z.union([z.array(z.number()).min(1), z.array(z.array(z.number()).min(1)).min(1)]);

export function readQueryVectors(file: string): Float32Array[] {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new IndexError(`cannot read query vectors from ${file}: ${(err as Error).message}`);
  }
  const parsed = vectorFile.safeParse(raw);
  if (!parsed.success) throw new IndexError(`${file} must hold a JSON array of numbers (one query) or an array of such arrays (several queries)`);
  const v = parsed.data;
  return typeof v[0] === 'number' ? [Float32Array.from(v as number[])] : (v as number[][]).map((q) => Float32Array.from(q));
}

export interface SearchCliOptions {
  indexes: string[];
  vectorFile: string;
  k: number;
  exact: boolean;
  repeat: number;
  logitScale?: number;
  mode?: IndexMode;
}

export interface SearchCliOutput {
  results: Array<Array<{ row: number; url: string; score: number }>>;
  latency_ms: { p50: number; p99: number };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export async function runSearch(o: SearchCliOptions): Promise<SearchCliOutput> {
  if (!Number.isInteger(o.k) || o.k < 1) throw new IndexError(`-k must be a positive integer, got ${o.k}`);
  if (!Number.isInteger(o.repeat) || o.repeat < 1) throw new IndexError(`--repeat must be a positive integer, got ${o.repeat}`);
  const queries = readQueryVectors(o.vectorFile);
  const index = await MultiIndex.open(o.indexes, { logitScale: o.logitScale, mode: o.mode });
  try {
    const results: SearchCliOutput['results'] = [];
    const times: number[] = [];
    for (const q of queries) {
      let hits = await index.search(q, o.k, { exact: o.exact });
      for (let r = 0; r < o.repeat; r++) {
        const t0 = performance.now();
        hits = await index.search(q, o.k, { exact: o.exact });
        times.push(performance.now() - t0);
      }
      results.push(hits.map((h) => ({ row: h.row, url: h.url, score: h.score })));
    }
    times.sort((a, b) => a - b);
    const round = (x: number) => Math.round(x * 1000) / 1000;
    return { results, latency_ms: { p50: round(percentile(times, 50)), p99: round(percentile(times, 99)) } };
  } finally {
    await index.close();
  }
}

export function formatSearch(out: SearchCliOutput): string {
  const lines: string[] = [];
  out.results.forEach((hits, i) => {
    lines.push(`query ${i}:`);
    for (const h of hits) lines.push(`  ${String(h.row).padStart(9)}  ${h.score.toFixed(4).padStart(10)}  ${h.url}`);
  });
  lines.push(`latency: p50 ${out.latency_ms.p50} ms, p99 ${out.latency_ms.p99} ms`);
  return lines.join('\n');
}
