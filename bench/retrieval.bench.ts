/**
 * Retrieval benchmark: a synthetic CC3M-sized index (default 2.6M x 256) written as a real
 * cc3m_embeddings.pkl, then import time, load time, query latency p50/p99 for the exact fp32
 * scan and the quantized shortlist + fp32 re-rank, recall@8 of quantized vs exact, RSS, and a
 * plain JS loop over the in-memory matrix as the baseline. Goal: p50 <= 30 ms at recall@8 >= 0.99.
 *
 *   npm run bench:retrieval -- [--rows N] [--dim D] [--queries Q] [--bits 8,4] [--dir DIR] [--keep]
 *
 * Needs ~3-6 GB of RAM and 2x the fp32 matrix on disk (pickle + index) under --dir (default
 * the OS temp dir); everything is deleted at the end unless --keep.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EmbeddingIndex } from '../src/retrieval/embedding-index.ts';
import { importPickle } from '../src/retrieval/import-pickle.ts';
import { readManifest } from '../src/retrieval/index-files.ts';
import { buildSearchGraph } from '../src/retrieval/quantized-search.ts';
import { l2normalize, TopK } from '../src/retrieval/topk.ts';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback;
}

const ROWS = Number(arg('rows', '2600000'));
const DIM = Number(arg('dim', '256'));
const QUERIES = Number(arg('queries', '100'));
const EXACT_QUERIES = Math.min(QUERIES, Number(arg('exact-queries', '10')));
const K = 8;
const KEEP = process.argv.includes('--keep');
const BITS = arg('bits', '8,4').split(',').map((b) => (b.trim() === '4' ? 4 : 8) as 4 | 8);
const BASE = fs.mkdtempSync(path.join(arg('dir', os.tmpdir()), 'fromage-bench-retrieval-'));

/** Deterministic PRNG (xorshift32) so runs are comparable. */
let state = 0x9e3779b9;
function rand(): number {
  state ^= state << 13;
  state ^= state >>> 17;
  state ^= state << 5;
  return (state >>> 0) / 4294967296;
}
/** Cheap approximately-normal values (Irwin-Hall, 4 uniforms). */
const gauss = () => (rand() + rand() + rand() + rand() - 2) * 1.7320508;

const CLUSTERS = 4096;
const centers = new Float32Array(CLUSTERS * DIM).map(() => gauss());

/** Row i: a cluster centre plus noise, like CLIP embeddings of similar photos. */
function fillRow(out: Float32Array, offset: number): void {
  const c = Math.floor(rand() * CLUSTERS) * DIM;
  for (let d = 0; d < DIM; d++) out[offset + d] = centers[c + d] + 0.8 * gauss();
}

const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
const ms = (t: number) => `${t.toFixed(1)} ms`;
function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}
let peakRss = 0;
const sampleRss = () => {
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
};
const rssTimer = setInterval(sampleRss, 200);

/** Writes {'paths': [...], 'embeddings': float32 (N, D)} as pickle protocol 4, numpy's layout. */
function writePickle(file: string): void {
  const fd = fs.openSync(file, 'w');
  const parts: Buffer[] = [];
  const flush = () => {
    if (parts.length) fs.writeSync(fd, Buffer.concat(parts));
    parts.length = 0;
  };
  const str = (s: string) => {
    const b = Buffer.from(s, 'utf8');
    const head = b.length < 256 ? Buffer.from([0x8c, b.length]) : Buffer.concat([Buffer.from([0x58]), u32(b.length)]);
    parts.push(head, b);
  };
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    return b;
  };
  parts.push(Buffer.from([0x80, 0x04, 0x7d, 0x28])); // PROTO 4, EMPTY_DICT, MARK
  str('paths');
  parts.push(Buffer.from([0x5d])); // EMPTY_LIST
  for (let i = 0; i < ROWS; i += 1000) {
    parts.push(Buffer.from([0x28])); // MARK
    for (let j = i; j < Math.min(ROWS, i + 1000); j++) str(`https://img.example.org/cc3m/${j.toString(36)}/photo-${j}.jpg`);
    parts.push(Buffer.from([0x65])); // APPENDS
    if (parts.length > 20000) flush();
  }
  str('embeddings');
  str('numpy.core.multiarray');
  str('_reconstruct');
  parts.push(Buffer.from([0x93]));
  str('numpy');
  str('ndarray');
  parts.push(Buffer.from([0x93, 0x4b, 0x00, 0x85, 0x43, 0x01, 0x62, 0x87, 0x52, 0x28, 0x4b, 0x01, 0x4a]), u32(ROWS), Buffer.from([0x4a]), u32(DIM), Buffer.from([0x86]));
  str('numpy');
  str('dtype');
  parts.push(Buffer.from([0x93]));
  str('f4');
  parts.push(Buffer.from([0x89, 0x88, 0x87, 0x52, 0x28, 0x4b, 0x03]));
  str('<');
  parts.push(Buffer.from([0x4e, 0x4e, 0x4e, 0x4a, 0xff, 0xff, 0xff, 0xff, 0x4a, 0xff, 0xff, 0xff, 0xff, 0x4b, 0x00, 0x74, 0x62, 0x89]));
  const bytes = Buffer.alloc(9);
  bytes[0] = 0x8e; // BINBYTES8
  bytes.writeBigUInt64LE(BigInt(ROWS * DIM * 4), 1);
  parts.push(bytes);
  flush();
  const chunkRows = 65536;
  const chunk = new Float32Array(chunkRows * DIM);
  for (let first = 0; first < ROWS; first += chunkRows) {
    const n = Math.min(chunkRows, ROWS - first);
    for (let r = 0; r < n; r++) fillRow(chunk, r * DIM);
    fs.writeSync(fd, new Uint8Array(chunk.buffer, 0, n * DIM * 4));
  }
  parts.push(Buffer.from([0x74, 0x62, 0x75, 0x2e])); // TUPLE, BUILD, SETITEMS, STOP
  flush();
  fs.closeSync(fd);
}

async function main(): Promise<void> {
  console.log(`retrieval bench: ${ROWS} x ${DIM} rows, ${QUERIES} queries, k=${K}, in ${BASE} (node ${process.version}, ${os.cpus().length} CPUs)`);
  const pkl = path.join(BASE, 'cc3m_embeddings.pkl');
  const dir = path.join(BASE, 'index');
  let t = performance.now();
  writePickle(pkl);
  console.log(`synthetic pickle:      ${((performance.now() - t) / 1000).toFixed(1)} s, ${mib(fs.statSync(pkl).size)}`);

  t = performance.now();
  await importPickle(pkl, dir, { quantize: false, silent: true });
  const importMs = performance.now() - t;
  fs.rmSync(pkl);
  console.log(`import (stream+norm):  ${(importMs / 1000).toFixed(1)} s (${Math.round(ROWS / (importMs / 1000))} rows/s)`);

  // Queries: perturbed copies of random rows (a caption close to some images).
  const queries: Float32Array[] = [];
  const rowsFd = fs.openSync(path.join(dir, 'rows.f32'), 'r');
  for (let i = 0; i < QUERIES; i++) {
    const q = new Float32Array(DIM);
    fs.readSync(rowsFd, new Uint8Array(q.buffer), 0, DIM * 4, Math.floor(rand() * ROWS) * DIM * 4);
    for (let d = 0; d < DIM; d++) q[d] += 0.05 * gauss();
    queries.push(q);
  }
  fs.closeSync(rowsFd);

  let exactRows: number[][] = [];
  for (const bits of BITS) {
    t = performance.now();
    await buildSearchGraph(dir, readManifest(dir), { bits, silent: true });
    console.log(`\n[${bits}-bit] quantize:   ${((performance.now() - t) / 1000).toFixed(1)} s, search.onnx.data ${mib(fs.statSync(path.join(dir, 'search.onnx.data')).size)}`);
    sampleRss();
    const rssBefore = process.memoryUsage().rss;
    t = performance.now();
    const index = await EmbeddingIndex.open(dir, { logitScale: Math.log(1 / 0.07) });
    const loadMs = performance.now() - t;
    sampleRss();
    console.log(`[${bits}-bit] load:       ${ms(loadMs)} (quantized=${index.quantized}), RSS +${mib(process.memoryUsage().rss - rssBefore)} -> ${mib(process.memoryUsage().rss)}`);
    for (let i = 0; i < 3; i++) await index.search(queries[i], K); // warm-up
    const qTimes: number[] = [];
    const quantRows: number[][] = [];
    for (const q of queries) {
      const t0 = performance.now();
      const hits = await index.search(q, K);
      qTimes.push(performance.now() - t0);
      quantRows.push(hits.map((h) => h.row));
    }
    qTimes.sort((a, b) => a - b);
    sampleRss();
    if (exactRows.length === 0) {
      const eTimes: number[] = [];
      for (let i = 0; i < EXACT_QUERIES; i++) {
        const t0 = performance.now();
        exactRows.push((await index.search(queries[i], K, { exact: true })).map((h) => h.row));
        eTimes.push(performance.now() - t0);
      }
      eTimes.sort((a, b) => a - b);
      console.log(`exact fp32 (streamed):  p50 ${ms(pct(eTimes, 50))}, p99 ${ms(pct(eTimes, 99))} (${EXACT_QUERIES} queries, rows read from rows.f32)`);
    }
    let recallHits = 0;
    exactRows.forEach((rows, i) => {
      const got = new Set(quantRows[i]);
      recallHits += rows.filter((r) => got.has(r)).length;
    });
    const recall = recallHits / (exactRows.length * K);
    console.log(`[${bits}-bit] search:     p50 ${ms(pct(qTimes, 50))}, p99 ${ms(pct(qTimes, 99))} (${QUERIES} queries, shortlist + fp32 re-rank)`);
    console.log(`[${bits}-bit] recall@${K}:   ${recall.toFixed(4)} vs exact (${exactRows.length} queries)`);
    console.log(`[${bits}-bit] goal p50 <= 30 ms with recall@8 >= 0.99: ${pct(qTimes, 50) <= 30 && recall >= 0.99 ? 'met' : 'NOT met'}`);
    await index.close();
  }
  exactRows = [];

  // Baseline: the whole fp32 matrix in memory and a plain JS loop, as a naive port would do.
  const matrix = new Float32Array(ROWS * DIM);
  const fd = fs.openSync(path.join(dir, 'rows.f32'), 'r');
  const bytes = new Uint8Array(matrix.buffer);
  for (let off = 0; off < bytes.length; ) off += fs.readSync(fd, bytes, off, Math.min(1 << 30, bytes.length - off), off);
  fs.closeSync(fd);
  sampleRss();
  const bTimes: number[] = [];
  for (let i = 0; i < 3; i++) {
    const q = l2normalize(queries[i]);
    const t0 = performance.now();
    const top = new TopK(K);
    for (let r = 0; r < ROWS; r++) {
      let s = 0;
      for (let d = 0; d < DIM; d++) s += matrix[r * DIM + d] * q[d];
      top.push(r, s);
    }
    bTimes.push(performance.now() - t0);
    if (top.size !== K) throw new Error('baseline failed');
  }
  bTimes.sort((a, b) => a - b);
  console.log(`JS loop baseline:      p50 ${ms(pct(bTimes, 50))} (fp32 matrix in memory, one multiply-add per element, 3 queries)`);
  console.log(`peak RSS:              ${mib(peakRss)} (the baseline's in-memory matrix is ${mib(ROWS * DIM * 4)} of it)`);
}

try {
  await main();
} finally {
  clearInterval(rssTimer);
  if (!KEEP) fs.rmSync(BASE, { recursive: true, force: true });
}
