import fs from 'node:fs';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attr, OnnxGraphWriter } from '../../src/convert/onnx/graph-builder.ts';
import { preprocessImage } from '../../src/model/preprocess.ts';
import { buildGallery } from '../../src/retrieval/build-gallery.ts';
import { EmbeddingIndex } from '../../src/retrieval/embedding-index.ts';
import { ImageFetcher } from '../../src/retrieval/fetch/image-fetcher.ts';
import { FORMAT_VERSION } from '../../src/model/manifest.ts';
import { FIXTURES, tempDirs } from './helpers.ts';
import { startImageServer, type ImageServer } from './image-server.ts';

const PRE = { size: 32, crop_size: 32, resample: 'bicubic', rescale_factor: 1 / 255, image_mean: [0.48145466, 0.4578275, 0.40821073], image_std: [0.26862954, 0.26130258, 0.27577711] };

/**
 * A stand-in bundle: fromage.json plus a vision graph whose ret_embs is a fixed linear map of
 * the per-channel pixel means. Enough to test the plumbing (preprocess -> vision -> index).
 */
async function fakeBundle(dir: string): Promise<void> {
  const g = await OnnxGraphWriter.create(path.join(dir, 'vision.onnx'), { name: 'vision' });
  const px = g.input('pixel_values', 'FLOAT', ['batch', 3, 32, 32]);
  const mean = g.op('ReduceMean', [px], { axes: attr.ints([2, 3]), keepdims: attr.int(0) });
  const w = g.constFloat(Array.from({ length: 48 }, (_, i) => Math.sin(i + 1)), [3, 16]);
  g.output('ret_embs', 'FLOAT', ['batch', 16], g.op('MatMul', [mean, w]));
  await g.finish();
  const manifest = {
    format: 'fromage-bundle',
    format_version: FORMAT_VERSION,
    id: 'fake-bundle-0001',
    created: new Date().toISOString(),
    model: { hidden_size: 64, num_layers: 2, num_heads: 4, head_dim: 16, ffn_dim: 256, vocab_size: 296, max_positions: 128, n_visual_tokens: 1, shared_emb_dim: 16, clip_hidden_size: 48, image_size: 32, logit_scale: 2.90625 },
    tokens: { bos: 2, eos: 2, pad: 1, image: 294, ret: 295, newline: 202 },
    preprocess: PRE,
    graphs: { vision: 'vision.onnx', embed: 'embed.onnx', decoder: 'decoder.onnx' },
    weights: { dtype: 'fp32' },
    fromage_args: {},
    sources: [],
  };
  fs.writeFileSync(path.join(dir, 'fromage.json'), JSON.stringify(manifest));
}

let server: ImageServer;
let bundle: string;
const { dir, cleanup } = tempDirs();
beforeAll(async () => {
  server = await startImageServer();
  bundle = dir('bundle');
  await fakeBundle(bundle);
});
afterAll(async () => {
  await server.close();
  cleanup();
});

function gallery(): string {
  const d = dir('gallery');
  for (const f of fs.readdirSync(path.join(FIXTURES, 'images'))) fs.copyFileSync(path.join(FIXTURES, 'images', f), path.join(d, f));
  fs.mkdirSync(path.join(d, 'sub'));
  fs.copyFileSync(path.join(FIXTURES, 'img/00003.png'), path.join(d, 'sub', 'x 1.png'));
  fs.copyFileSync(path.join(FIXTURES, 'img/gone_00001.png'), path.join(d, 'c_broken.png'));
  fs.writeFileSync(path.join(d, 'notes.txt'), 'not an image');
  return d;
}

describe('index build', () => {
  it('embeds a folder with the vision graph, skipping undecodable files', async () => {
    const g = gallery();
    const out = dir('built');
    const skipped: string[] = [];
    const r = await buildGallery({ bundle, images: g, out, silent: true, onSkip: (u) => skipped.push(u) });
    expect(r.manifest).toMatchObject({ rows: 8, dim: 16, logit_scale: 2.90625, gallery_root: path.resolve(g) });
    expect(skipped).toHaveLength(1);
    expect(skipped[0]).toMatch(/c_broken\.png$/);
    const index = await EmbeddingIndex.open(out);
    expect(index.url(0)).toBe(`file://${path.resolve(g)}/alpha.png`);
    expect(index.url(6)).toBe(`file://${path.resolve(g)}/sub/x%201.png`);
    // row 4 (landscape.png) is the normalized ret_embs of that image
    const session = await ort.InferenceSession.create(path.join(bundle, 'vision.onnx'));
    const pre = await preprocessImage(fs.readFileSync(path.join(g, 'landscape.png')), { size: 32, cropSize: 32, rescaleFactor: 1 / 255, mean: PRE.image_mean, std: PRE.image_std });
    const emb = (await session.run({ pixel_values: new ort.Tensor('float32', pre.pixelValues, [1, 3, 32, 32]) })).ret_embs.data as Float32Array;
    const hits = await index.search(emb, 1);
    expect(hits[0].row).toBe(4);
    expect(hits[0].score).toBeCloseTo(Math.exp(2.90625), 4);
    await session.release();
    // local gallery images are served from disk only through fileRoots
    expect(await new ImageFetcher({ fileRoots: index.galleryRoot ? [index.galleryRoot] : [] }).fetch(index.url(4))).toMatchObject({ width: 120, height: 80 });
    expect(await new ImageFetcher().fetchDetailed(index.url(4))).toMatchObject({ ok: false, reason: 'bad-url' });
    await index.close();
  });

  it('resumes an interrupted build and ends with the same index', async () => {
    const g = gallery();
    const whole = dir('whole');
    await buildGallery({ bundle, images: g, out: whole, silent: true });
    const out = dir('resumed');
    await expect(
      buildGallery({ bundle, images: g, out, batchSize: 1, silent: true, onSkip: () => { throw new Error('interrupted'); } }),
    ).rejects.toThrow('interrupted');
    expect(fs.existsSync(path.join(out, 'rows.f32.partial'))).toBe(true);
    const r = await buildGallery({ bundle, images: g, out, silent: true });
    expect(r.resumedFrom).toBe(1); // alpha.png was embedded before c_broken.png stopped the run
    expect(r.embedded).toBe(7);
    expect(fs.readFileSync(path.join(out, 'rows.f32')).equals(fs.readFileSync(path.join(whole, 'rows.f32')))).toBe(true);
    expect(fs.readdirSync(out).filter((f) => f.includes('partial'))).toEqual([]);
  });

  it('refuses to resume a partial build with other images', async () => {
    const out = dir('mixed');
    await expect(
      buildGallery({ bundle, images: gallery(), out, batchSize: 1, silent: true, onSkip: () => { throw new Error('interrupted'); } }),
    ).rejects.toThrow('interrupted');
    await expect(buildGallery({ bundle, images: gallery(), out, silent: true })).rejects.toThrow(/unfinished build of .* same --images and --bundle, or delete/);
  });

  it('says how to start over when the resume marker is damaged', async () => {
    const out = dir('damaged');
    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(path.join(out, 'build.partial.json'), '{"bundle_id": ');
    await expect(buildGallery({ bundle, images: gallery(), out, silent: true })).rejects.toThrow(/build.partial.json .* is damaged; delete .* to start over/);
  });

  it('embeds from a urls.txt through the safe fetcher', async () => {
    const list = path.join(dir('urls'), 'urls.txt');
    fs.writeFileSync(list, `# gallery\n${server.base}/img/00000.png\n\n${server.base}/img/gone_00001.png\n${server.base}/img/00002.png\nhttp://10.0.0.1/x.png\n`);
    const out = dir('from-urls');
    const skipped: string[] = [];
    const r = await buildGallery({ bundle, images: list, out, silent: true, fetcher: { allow: ['127.0.0.1'] }, onSkip: (u, why) => skipped.push(`${u} ${why}`) });
    expect(r.manifest.rows).toBe(2);
    expect(r.manifest.gallery_root).toBeUndefined();
    expect(skipped.join('\n')).toMatch(/gone_00001.*\n.*10\.0\.0\.1.*refused-address/);
  });

  it('names the problem for a missing bundle or empty input', async () => {
    await expect(buildGallery({ bundle: '/nonexistent', images: gallery(), out: dir('x'), silent: true })).rejects.toThrow(/no model bundle.*fromage setup/);
    await expect(buildGallery({ bundle, images: dir('empty'), out: dir('y'), silent: true })).rejects.toThrow(/holds no images/);
  });
});
