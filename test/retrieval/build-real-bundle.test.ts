/**
 * `index build` with a bundle converted from the fixtures (the real converter and vision graph):
 * embedding the index's own images must reproduce the rows FROMAGe's extract_img_embs.py
 * wrote into cc3m_embeddings.pkl, and each preprocessing test image must find itself.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertBundle } from '../../src/convert/convert.ts';
import { buildGallery } from '../../src/retrieval/build-gallery.ts';
import { EmbeddingIndex } from '../../src/retrieval/embedding-index.ts';
import { importPickle } from '../../src/retrieval/import-pickle.ts';
import { FIXTURES, refTensor, tmpDir } from './helpers.ts';

let work: string;
let bundle: string;
beforeAll(async () => {
  work = tmpDir('real-bundle');
  bundle = path.join(work, 'bundle');
  await convertBundle({
    optDir: path.join(FIXTURES, 'facebook/opt-6.7b'),
    clipDir: path.join(FIXTURES, 'openai/clip-vit-large-patch14'),
    fromageDir: path.join(FIXTURES, 'fromage_model'),
    outDir: bundle,
    weights: 'fp32',
    progress: { silent: true },
  });
});
afterAll(() => {
  fs.rmSync(work, { recursive: true, force: true });
});

describe('index build with the converted fixture bundle', () => {
  it("reproduces cc3m_embeddings.pkl's rows from the index images", async () => {
    const gallery = path.join(work, 'img');
    fs.mkdirSync(gallery);
    for (const f of fs.readdirSync(path.join(FIXTURES, 'img'))) if (/^\d{5}\.png$/.test(f)) fs.copyFileSync(path.join(FIXTURES, 'img', f), path.join(gallery, f));
    const built = await buildGallery({ bundle, images: gallery, out: path.join(work, 'built'), silent: true });
    expect(built.manifest.rows).toBe(64); // 00001/00057 exist as files; only their index URLs are dead
    const imported = path.join(work, 'imported');
    await importPickle(path.join(FIXTURES, 'fromage_model/cc3m_embeddings.pkl'), imported, { silent: true, quantize: false });
    const a = new Float32Array(fs.readFileSync(path.join(work, 'built', 'rows.f32')).buffer.slice(0));
    const b = new Float32Array(fs.readFileSync(path.join(imported, 'rows.f32')).buffer.slice(0));
    const index = await EmbeddingIndex.open(path.join(work, 'built'));
    let worst = 0;
    for (let row = 0; row < index.rows; row++) {
      const ref = Number(/(\d{5})\.png$/.exec(index.url(row))?.[1]);
      for (let d = 0; d < 16; d++) worst = Math.max(worst, Math.abs(a[row * 16 + d] - b[ref * 16 + d]));
    }
    // Pillow-exact preprocessing + fp32 graph: normalized rows agree to float noise
    expect(worst).toBeLessThan(1e-4);
    await index.close();
  });

  it('finds each preprocessing test image from its reference retrieval embedding', async () => {
    const out = path.join(work, 'images');
    await buildGallery({ bundle, images: path.join(FIXTURES, 'images'), out, silent: true });
    const index = await EmbeddingIndex.open(out);
    for (const name of ['alpha.png', 'landscape.png', 'portrait.jpg', 'tiny_10x7.png']) {
      const q = Float32Array.from(refTensor(`pre.${name.replace('.', '_')}.vis1.visual_embs_retrieval`).data);
      const [hit] = await index.search(q, 1);
      expect(hit.url.endsWith(`/${name}`)).toBe(true);
      expect(hit.score / Math.exp(index.manifest.logit_scale ?? 0)).toBeGreaterThan(0.99999);
    }
    await index.close();
  });
});
