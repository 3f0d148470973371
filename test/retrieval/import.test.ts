import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EmbeddingIndex } from '../../src/retrieval/embedding-index.ts';
import { importPickle } from '../../src/retrieval/import-pickle.ts';
import { FIXTURES, refCase, refIndexPaths, refTensor, tmpDir } from './helpers.ts';

const SHAPES = {
  vis1: {
    array: 'fromage_model/cc3m_embeddings.pkl',
    list: 'variants/index/vis1/cc3m_embeddings_list.pkl',
    fp16: 'variants/index/vis1/cc3m_embeddings_fp16.pkl',
  },
  vis4: {
    array: 'fromage_model/fromage_vis4/cc3m_embeddings.pkl',
    list: 'variants/index/vis4/cc3m_embeddings_list.pkl',
    fp16: 'variants/index/vis4/cc3m_embeddings_fp16.pkl',
  },
} as const;

const made: string[] = [];
afterAll(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

function out(name: string): string {
  const d = tmpDir(name);
  made.push(d);
  return d;
}

describe('index import of cc3m_embeddings.pkl', () => {
  for (const variant of ['vis1', 'vis4'] as const) {
    it(`${variant}: all three pickle shapes give FROMAGe's candidates and scores`, async () => {
      const logitScale = refTensor(`${variant}.logit_scale`).data[0];
      const results: Record<string, number[][]> = {};
      for (const [shape, rel] of Object.entries(SHAPES[variant])) {
        const dir = out(`imp-${variant}-${shape}`);
        const manifest = await importPickle(path.join(FIXTURES, rel), dir, { logitScale, silent: true });
        expect(manifest).toMatchObject({ rows: 64, dim: 16, logit_scale: logitScale, quantized: { bits: 8, block_size: 16 } });
        const index = await EmbeddingIndex.open(dir);
        expect(index.url(1)).toBe(refIndexPaths().paths[1]);
        results[shape] = [];
        for (const name of ['iii_text_ret', 'vii_text_two_rets']) {
          const c = refCase(variant, name);
          for (const ret of c.rets) {
            const hits = await index.search(Float32Array.from(refTensor(ret.emb).data), c.kwargs.max_img_per_ret + 3, { exclude: new Set(ret.seen_before) });
            expect(hits.map((h) => h.row)).toEqual(ret.top_candidates);
            const want = refTensor(ret.scores_after_downweight).data;
            // fp16 rows move scores by up to ~2.5e-3 (fixtures README); fp32 shapes agree to ~1e-5
            for (const h of hits) expect(Math.abs(h.score - want[h.row])).toBeLessThan(shape === 'fp16' ? 5e-3 : 1e-4);
            results[shape].push(hits.map((h) => h.row));
          }
        }
        await index.close();
      }
      expect(results.list).toEqual(results.array);
      expect(results.fp16).toEqual(results.array);
      // the list and array shapes hold the same float32 rows, so the files are byte-identical
    });
  }

  it('array and list shapes write identical rows', async () => {
    const a = out('imp-a');
    const b = out('imp-b');
    await importPickle(path.join(FIXTURES, SHAPES.vis1.array), a, { silent: true, quantize: false });
    await importPickle(path.join(FIXTURES, SHAPES.vis1.list), b, { silent: true, quantize: false });
    expect(fs.readFileSync(path.join(a, 'rows.f32')).equals(fs.readFileSync(path.join(b, 'rows.f32')))).toBe(true);
    expect(fs.readFileSync(path.join(a, 'urls.txt'), 'utf8')).toBe(fs.readFileSync(path.join(b, 'urls.txt'), 'utf8'));
  });
});

describe('index import refuses bad pickles with a clear error', () => {
  it('an unknown global (code execution attempt)', async () => {
    const file = path.join(out('bad-global'), 'evil.pkl');
    fs.writeFileSync(file, Buffer.from('800263706f7369780a73797374656d0a71002e', 'hex')); // posix.system
    await expect(importPickle(file, out('o1'), { silent: true })).rejects.toThrow(/posix\.system|not allowed|refus/i);
  });

  it('a truncated file', async () => {
    const file = path.join(out('bad-trunc'), 'trunc.pkl');
    const full = fs.readFileSync(path.join(FIXTURES, SHAPES.vis1.array));
    fs.writeFileSync(file, full.subarray(0, Math.floor(full.length / 2)));
    await expect(importPickle(file, out('o2'), { silent: true })).rejects.toThrow(/trunc\.pkl/);
  });

  it('paths and rows that do not match', async () => {
    const file = path.join(out('bad-count'), 'count.pkl');
    // {'paths': ['http://a/1.png', 'http://a/2.png'], 'embeddings': []}
    fs.writeFileSync(file, Buffer.from('80027d7100285805000000706174687371015d710228580e000000687474703a2f2f612f312e706e677103580e000000687474703a2f2f612f322e706e67710465580a000000656d62656464696e677371055d7106752e', 'hex'));
    await expect(importPickle(file, out('o3'), { silent: true })).rejects.toThrow(/2 paths but 0 embedding rows/);
  });

  it('something that is not the index format', async () => {
    const file = path.join(out('bad-shape'), 'list.pkl');
    // {'paths': ['http://a/1.png'], 'embeddings': [[1.0, 2.0]]}: rows are plain lists
    fs.writeFileSync(file, Buffer.from('80027d7100285805000000706174687371015d7102580e000000687474703a2f2f612f312e706e67710361580a000000656d62656464696e677371045d71055d710628473ff00000000000004740000000000000006561752e', 'hex'));
    await expect(importPickle(file, out('o4'), { silent: true })).rejects.toThrow(/embeddings\[0\] is not a numpy array/);
    await expect(importPickle('/nonexistent.pkl', out('o5'), { silent: true })).rejects.toThrow(/nonexistent\.pkl/);
  });

  it('refuses a non-empty --out unless forced, and reports URLs that can never be fetched', async () => {
    const dir = out('overwrite');
    const warnings: string[] = [];
    const pkl = path.join(FIXTURES, SHAPES.vis1.array);
    await importPickle(pkl, dir, { silent: true, quantize: false, warn: (m) => warnings.push(m) });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^64 of 64 URLs can never be fetched; retrieval will skip those rows:\n {2}row 0: http:\/\/127\.0\.0\.1:PORT\/img\/00000\.png \(not a valid URL\)\n.*\n.*\n {2}\.\.\. and 61 more\n/);
    const before = fs.readFileSync(path.join(dir, 'index.json'), 'utf8');
    await expect(importPickle(pkl, dir, { silent: true, quantize: false })).rejects.toThrow(/already exists and is not empty; pass --force to replace it/);
    expect(fs.readFileSync(path.join(dir, 'index.json'), 'utf8')).toBe(before);
    await expect(importPickle(pkl, dir, { silent: true, quantize: false, force: true })).resolves.toMatchObject({ rows: 64 });
    await expect(importPickle(pkl, path.join(dir, 'index.json'), { silent: true })).rejects.toThrow(/is a file; give a directory/);
  });
});
