import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmbeddingIndex, MultiIndex } from '../../src/retrieval/embedding-index.ts';
import { IndexError } from '../../src/retrieval/format.ts';
import { buildSearchGraph } from '../../src/retrieval/quantized-search.ts';
import { refCase, refTensor, tmpDir, writeReferenceIndex } from './helpers.ts';

const CASES = [
  ['vis1', 'iii_text_ret'],
  ['vis1', 'vii_text_two_rets'],
  ['vis4', 'iii_text_ret'],
  ['vis4', 'vii_text_two_rets'],
] as const;

describe('EmbeddingIndex matches FROMAGe retrieval', () => {
  const dirs: Record<string, string> = {};
  beforeAll(() => {
    for (const v of ['vis1', 'vis4'] as const) {
      dirs[v] = tmpDir(`idx-${v}`);
      writeReferenceIndex(dirs[v], v);
    }
  });
  afterAll(() => {
    for (const d of Object.values(dirs)) fs.rmSync(d, { recursive: true, force: true });
  });

  for (const [variant, name] of CASES) {
    it(`${variant} ${name}: candidate order and scores (exact and quantized)`, async () => {
      const c = refCase(variant, name);
      const exact = await EmbeddingIndex.open(dirs[variant]);
      await buildSearchGraph(dirs[variant], exact.manifest, { silent: true });
      const quant = await EmbeddingIndex.open(dirs[variant], { mode: 'quantized' });
      expect(quant.quantized).toBe(true);
      for (const ret of c.rets) {
        const q = Float32Array.from(refTensor(ret.emb).data);
        const all = refTensor(ret.scores).data;
        const down = refTensor(ret.scores_after_downweight).data;
        const k = c.kwargs.max_img_per_ret + 3;
        for (const index of [exact, quant]) {
          const hits = await index.search(q, k, { exclude: new Set(ret.seen_before) });
          expect(hits.map((h) => h.row)).toEqual(ret.top_candidates);
          for (const h of hits) expect(h.score).toBeCloseTo(down[h.row], 4);
          // the full ranking (k = N) reproduces every score, excluded rows included
          const full = await index.search(q, exact.rows, { exclude: new Set(ret.seen_before) });
          for (const h of full) expect(h.score).toBeCloseTo(down[h.row], 4);
          const undown = await index.search(q, exact.rows);
          for (const h of undown) expect(h.score).toBeCloseTo(all[h.row], 4);
        }
      }
      await exact.close();
      await quant.close();
    });
  }

  it('MultiIndex offsets rows and excludes across indexes', async () => {
    const c = refCase('vis1', 'iii_text_ret');
    const q = Float32Array.from(refTensor(c.rets[0].emb).data);
    const multi = await MultiIndex.open([dirs.vis4, dirs.vis1]);
    expect(multi.rows).toBe(128);
    const single = await EmbeddingIndex.open(dirs.vis1);
    const ref = await single.search(q, 128);
    const hits = await multi.search(q, 256);
    const fromVis1 = hits.filter((h) => h.source === dirs.vis1);
    expect(fromVis1.map((h) => h.row - 64)).toEqual(ref.map((h) => h.row));
    const top = hits[0];
    const again = await multi.search(q, 1, { exclude: new Set([top.row]) });
    expect(again[0].row).toBe(hits[1].row);
    expect(multi.locate(70)?.row).toBe(6);
    await multi.close();
    await single.close();
  });

  it('skips rows marked dead', async () => {
    const dir = tmpDir('idx-dead');
    writeReferenceIndex(dir, 'vis1');
    const c = refCase('vis1', 'iii_text_ret');
    const dead = new Uint8Array(64);
    dead[25] = 1;
    fs.writeFileSync(path.join(dir, 'dead.u8'), dead);
    const index = await EmbeddingIndex.open(dir);
    const hits = await index.search(Float32Array.from(refTensor(c.rets[0].emb).data), 5);
    expect(hits.map((h) => h.row)).toEqual([57, 20, 29, 10, 46]);
    expect((await index.search(Float32Array.from(refTensor(c.rets[0].emb).data), 64)).length).toBe(63);
    await index.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('EmbeddingIndex errors a user can cause', () => {
  it('names a missing directory, a non-index and a damaged rows file', async () => {
    await expect(EmbeddingIndex.open('/nonexistent/index')).rejects.toThrow(/does not exist.*fromage index import/);
    const dir = tmpDir('idx-bad');
    await expect(EmbeddingIndex.open(dir)).rejects.toThrow(/not a retrieval index: index\.json is missing/);
    writeReferenceIndex(dir);
    fs.truncateSync(path.join(dir, 'rows.f32'), 100);
    await expect(EmbeddingIndex.open(dir)).rejects.toThrow(/rows\.f32 is 100 bytes.*re-create/);
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify({ ...manifest, format_version: 99 }));
    await expect(EmbeddingIndex.open(dir)).rejects.toThrow(/format version 99/);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('rejects a query of the wrong width or with NaN', async () => {
    const dir = tmpDir('idx-q');
    writeReferenceIndex(dir);
    const index = await EmbeddingIndex.open(dir);
    await expect(index.search(new Float32Array(8), 3)).rejects.toBeInstanceOf(IndexError);
    await expect(index.search(new Float32Array(16).fill(Number.NaN), 3)).rejects.toThrow(/not a finite number/);
    expect(await index.search(new Float32Array(16).fill(1), 0)).toEqual([]);
    await index.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('asks for `index quantize` when quantized mode has no graph', async () => {
    const dir = tmpDir('idx-nq');
    writeReferenceIndex(dir);
    await expect(EmbeddingIndex.open(dir, { mode: 'quantized' })).rejects.toThrow(/fromage index quantize/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
