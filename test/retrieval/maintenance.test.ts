import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmbeddingIndex } from '../../src/retrieval/embedding-index.ts';
import { IndexWriter } from '../../src/retrieval/index-writer.ts';
import { mergeIndexes } from '../../src/retrieval/merge.ts';
import { pruneIndex } from '../../src/retrieval/prune.ts';
import { runSearch } from '../../src/retrieval/search-cli.ts';
import { refCase, refTensor, tempDirs, writeReferenceIndex } from './helpers.ts';
import { startImageServer, type ImageServer } from './image-server.ts';

let server: ImageServer;
const { dir, cleanup } = tempDirs();
beforeAll(async () => {
  server = await startImageServer();
});
afterAll(async () => {
  await server.close();
  cleanup();
});

function smallIndex(urls: string[]): string {
  const d = dir('small');
  const w = IndexWriter.create(d, 16, { source: 'test' });
  urls.forEach((u, i) => w.append(Array.from({ length: 16 }, (_, j) => (j === i % 16 ? 1 : 0.01 * j)), u));
  w.finish();
  return d;
}

describe('index merge', () => {
  it('concatenates rows in order, drops dead rows and refuses mismatched widths', async () => {
    const a = dir('ma');
    const b = dir('mb');
    writeReferenceIndex(a, 'vis1');
    writeReferenceIndex(b, 'vis4');
    const dead = new Uint8Array(64);
    dead[3] = 1;
    fs.writeFileSync(path.join(b, 'dead.u8'), dead);
    const out = dir('mout');
    const m = await mergeIndexes([a, b], out, { silent: true });
    expect(m.rows).toBe(127);
    expect(m.logit_scale).toBe(refTensor('vis1.logit_scale').data[0]); // both variants share it
    const merged = await EmbeddingIndex.open(out, { logitScale: refTensor('vis1.logit_scale').data[0] });
    const single = await EmbeddingIndex.open(a);
    const rowsA = fs.readFileSync(path.join(a, 'rows.f32'));
    expect(fs.readFileSync(path.join(out, 'rows.f32')).subarray(0, rowsA.length).equals(rowsA)).toBe(true);
    expect(merged.url(64 + 3)).toBe(single.url(4)); // row 3 of b was dropped
    const q = Float32Array.from(refTensor(refCase('vis1', 'iii_text_ret').rets[0].emb).data);
    const top = (await merged.search(q, 200)).filter((h) => h.row < 64);
    expect(top.map((h) => h.row)).toEqual((await single.search(q, 64)).map((h) => h.row));
    await merged.close();
    await single.close();
    const narrow = dir('narrow');
    const w = IndexWriter.create(narrow, 8, { source: 't' });
    w.append(new Float32Array(8).fill(1), 'http://x/1');
    w.finish();
    await expect(mergeIndexes([a, narrow], dir('mbad'), { silent: true })).rejects.toThrow(/8-d rows.*different models/);
    await expect(mergeIndexes([a, a], a, { silent: true })).rejects.toThrow(/also an input/);
  });

  it('gives an empty, searchable index when every row is dead', async () => {
    const a = dir('dead-a');
    writeReferenceIndex(a, 'vis1');
    fs.writeFileSync(path.join(a, 'dead.u8'), new Uint8Array(64).fill(1));
    const out = dir('dead-out');
    expect((await mergeIndexes([a, a], out, { silent: true })).rows).toBe(0);
    const index = await EmbeddingIndex.open(out);
    expect(await index.search(new Float32Array(16).fill(1), 8)).toEqual([]);
    await index.close();
  });
});

describe('index prune', () => {
  it('marks permanent failures dead, keeps transient ones, and search skips dead rows', async () => {
    const urls = [
      `${server.base}/img/00000.png`,
      `${server.base}/img/gone_00001.png`, // HTML as .png: dead
      `${server.base}/img/nothere.png`, // 404: dead
      `${server.base}/err500`, // 5xx: transient
      `${server.base}/slow?ms=2000`, // timeout: transient
      `${server.base}/gone410`, // 410: dead
      `${server.base}/img/00006.png`,
    ];
    const d = smallIndex(urls);
    const s = await pruneIndex(d, { rate: 1000, silent: true, fetcher: { allow: ['127.0.0.1'], totalTimeoutMs: 300 } });
    expect(s).toMatchObject({ rows: 7, checked: 7, dead: 3, transient: 2, complete: true });
    expect([...fs.readFileSync(path.join(d, 'dead.u8'))]).toEqual([0, 1, 1, 0, 0, 1, 0]);
    const index = await EmbeddingIndex.open(d);
    const hits = await index.search(Float32Array.from({ length: 16 }, (_, j) => (j === 1 ? 1 : 0)), 7);
    expect(hits.map((h) => h.row).sort()).toEqual([0, 3, 4, 6]);
    await index.close();
  });

  it('resumes where a limited or interrupted run stopped, and rate-limits', async () => {
    const urls = Array.from({ length: 10 }, (_, i) => (i % 3 === 0 ? `${server.base}/img/gone_00057.png?${i}` : `${server.base}/img/0000${i}.png`));
    const d = smallIndex(urls);
    const first = await pruneIndex(d, { rate: 1000, limit: 4, concurrency: 1, silent: true, fetcher: { allow: ['127.0.0.1'] } });
    expect(first).toMatchObject({ checked: 4, dead: 2, complete: false });
    expect(fs.existsSync(path.join(d, 'prune.state.json'))).toBe(true);
    const t0 = Date.now();
    const second = await pruneIndex(d, { rate: 20, silent: true, fetcher: { allow: ['127.0.0.1'] } });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250); // 6 more rows at 20/s
    expect(second).toMatchObject({ checked: 10, dead: 4, complete: true });
    expect(fs.existsSync(path.join(d, 'prune.state.json'))).toBe(false);
  });
});

describe('index search CLI contract', () => {
  it('prints results per query and latency percentiles', async () => {
    const d = dir('cli');
    writeReferenceIndex(d, 'vis1');
    const c = refCase('vis1', 'vii_text_two_rets');
    const file = path.join(d, 'q.json');
    fs.writeFileSync(file, JSON.stringify(c.rets.map((r) => refTensor(r.emb).data.map((x) => x * 3)))); // unnormalized
    const out = await runSearch({ indexes: [d], vectorFile: file, k: 5, exact: false, repeat: 3 });
    expect(Object.keys(out)).toEqual(['results', 'latency_ms']);
    expect(out.results).toHaveLength(2);
    expect(out.results[0].map((h) => h.row)).toEqual(c.rets[0].top_candidates);
    expect(Object.keys(out.results[0][0])).toEqual(['row', 'url', 'score']);
    expect(out.latency_ms.p50).toBeGreaterThanOrEqual(0);
    expect(out.latency_ms.p99).toBeGreaterThanOrEqual(out.latency_ms.p50);
    fs.writeFileSync(file, JSON.stringify(refTensor(c.rets[0].emb).data));
    expect((await runSearch({ indexes: [d], vectorFile: file, k: 2, exact: true, repeat: 1 })).results).toHaveLength(1);
    fs.writeFileSync(file, '{"v": 1}');
    await expect(runSearch({ indexes: [d], vectorFile: file, k: 2, exact: true, repeat: 1 })).rejects.toThrow(/JSON array of numbers/);
    await expect(runSearch({ indexes: [d], vectorFile: file, k: 0, exact: true, repeat: 1 })).rejects.toThrow(/-k must be/);
  });
});

describe('quantized search on a larger index', () => {
  for (const bits of [8, 4] as const) {
    it(`${bits}-bit shortlist + fp32 re-rank finds the exact top 8`, async () => {
      const d = dir(`quant${bits}`);
      const n = 60_000;
      const dim = 64;
      let seed = 7;
      const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff) * 2 - 1;
      const w = IndexWriter.create(d, dim, { source: 'synthetic' });
      const row = new Float32Array(dim);
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < dim; j++) row[j] = rand();
        w.append(row, `http://img.test/${i}.jpg`);
      }
      const m = w.finish();
      const { buildSearchGraph } = await import('../../src/retrieval/quantized-search.ts');
      expect((await buildSearchGraph(d, m, { bits, silent: true })).quantized).toEqual({ bits, block_size: 64 });
      const index = await EmbeddingIndex.open(d);
      expect(index.quantized).toBe(true);
      for (let t = 0; t < 5; t++) {
        const q = Float32Array.from({ length: dim }, rand);
        const exact = await index.search(q, 8, { exact: true });
        const quick = await index.search(q, 8);
        expect(quick.map((h) => h.row)).toEqual(exact.map((h) => h.row));
        for (let i = 0; i < 8; i++) expect(quick[i].score).toBeCloseTo(exact[i].score, 5);
        const exclude = new Set([exact[0].row, exact[3].row]);
        const ex2 = await index.search(q, 8, { exact: true, exclude });
        expect((await index.search(q, 8, { exclude })).map((h) => h.row)).toEqual(ex2.map((h) => h.row));
      }
      await index.close();
    });
  }
});
