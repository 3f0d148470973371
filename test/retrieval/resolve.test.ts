import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmbeddingIndex } from '../../src/retrieval/embedding-index.ts';
import { ImageFetcher } from '../../src/retrieval/fetch/image-fetcher.ts';
import { resolveCandidates } from '../../src/retrieval/resolve-candidates.ts';
import { refCase, refTensor, tmpDir, writeReferenceIndex } from './helpers.ts';
import { startImageServer, type ImageServer } from './image-server.ts';

let server: ImageServer;
const dirs: string[] = [];
beforeAll(async () => {
  server = await startImageServer();
});
afterAll(async () => {
  await server.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function setup(variant: 'vis1' | 'vis4'): { dir: string; fetcher: ImageFetcher } {
  const dir = tmpDir(`res-${variant}`);
  const cacheDir = tmpDir('res-cache');
  dirs.push(dir, cacheDir);
  writeReferenceIndex(dir, variant, server.port);
  return { dir, fetcher: new ImageFetcher({ cacheDir, allow: ['127.0.0.1'] }) };
}

describe('resolveCandidates reproduces FROMAGe attempted/returned', () => {
  for (const variant of ['vis1', 'vis4'] as const) {
    for (const name of ['iii_text_ret', 'vii_text_two_rets']) {
      it(`${variant} ${name}`, async () => {
        const { dir, fetcher } = setup(variant);
        const index = await EmbeddingIndex.open(dir);
        const c = refCase(variant, name);
        const seen = new Set<number>();
        for (const ret of c.rets) {
          expect([...seen]).toEqual(ret.seen_before);
          const hits = await index.search(Float32Array.from(refTensor(ret.emb).data), c.kwargs.max_img_per_ret + 3, { exclude: seen });
          const r = await resolveCandidates(fetcher, hits, { maxImages: c.kwargs.max_img_per_ret, deadline: Date.now() + 10_000 });
          expect(r.attempted).toEqual(ret.attempted);
          expect(r.images.map((i) => i.row)).toEqual(ret.returned);
          expect(r.timedOut).toBe(false);
          for (const img of r.images) expect(img.data.length).toBeGreaterThan(0);
          for (const row of r.attempted) seen.add(row);
        }
        await index.close();
      });
    }
  }

  it('stops at the deadline with what has loaded', async () => {
    const { fetcher } = setup('vis1');
    const hits = [
      { row: 0, url: `${server.base}/img/00000.png`, score: 3 },
      { row: 1, url: `${server.base}/slow?ms=3000`, score: 2 },
      { row: 2, url: `${server.base}/img/00002.png`, score: 1 },
    ];
    const t0 = Date.now();
    const r = await resolveCandidates(fetcher, hits, { maxImages: 3, deadline: Date.now() + 300 });
    expect(Date.now() - t0).toBeLessThan(1500);
    expect(r.timedOut).toBe(true);
    expect(r.images.map((i) => i.row)).toEqual([0]);
    expect(r.attempted).toEqual([0]);
  });

  it('skips candidates that fail and keeps order', async () => {
    const { fetcher } = setup('vis1');
    const hits = [
      { row: 5, url: `${server.base}/img/missing.png`, score: 3 },
      { row: 6, url: `${server.base}/img/00006.png`, score: 2 },
      { row: 7, url: `${server.base}/img/00007.png`, score: 1 },
    ];
    const r = await resolveCandidates(fetcher, hits, { maxImages: 1, deadline: Date.now() + 5000 });
    expect(r.images.map((i) => i.row)).toEqual([6]);
    expect(r.attempted).toEqual([5, 6]);
    expect((await resolveCandidates(fetcher, [], { maxImages: 2, deadline: Date.now() + 100 })).images).toEqual([]);
  });
});
