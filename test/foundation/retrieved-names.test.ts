/** Issue 11, bug 10: a retrieved image is named by the row of its own index, not by its place among all loaded indexes. */
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { replyImage } from '../../src/model/engine.ts';
import { openIndexBackend } from '../../src/model/index-backend.ts';
import { refCase, refTensor, tmpDir, writeReferenceIndex } from '../retrieval/helpers.ts';

describe('retrieved image names with several indexes', () => {
  const dirs: string[] = [];
  beforeAll(() => {
    for (const v of ['vis4', 'vis1'] as const) {
      const dir = tmpDir(`names-${v}`);
      writeReferenceIndex(dir, v);
      dirs.push(dir);
    }
  });
  afterAll(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  it('carries each hit\'s own row from the search to the saved file name', async () => {
    const backend = await openIndexBackend({ indexDirs: dirs, logitScale: 0, fetch: false });
    try {
      const query = Float32Array.from(refTensor(refCase('vis1', 'iii_text_ret').rets[0].emb).data);
      const candidates = await backend.search(query, 128, new Set());
      const fromSecond = candidates.filter((c) => c.row >= 64);
      expect(fromSecond.length).toBeGreaterThan(0);
      for (const c of candidates) expect(c.indexRow).toBe(c.row >= 64 ? c.row - 64 : c.row);
      const { images } = await backend.resolve(fromSecond, 1);
      expect(images[0].indexRow).toBe(fromSecond[0].row - 64);
    } finally {
      await backend.close();
    }
    const image = replyImage({ data: new Uint8Array([1]), contentType: 'image/png', row: 70, indexRow: 6, url: 'file:///gallery/cat.png', score: 1 });
    expect(image.filename).toBe('retrieved-6.png');
    expect(replyImage({ data: new Uint8Array([1]), contentType: 'image/jpeg', row: 12, url: 'http://x/y.jpg', score: 1 }).filename).toBe('retrieved-12.jpg');
  });
});
