/** Test helpers: a converted fixture bundle, a loopback image server and an exact retrieval backend. */
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, normalize } from 'node:path';
import sharp from 'sharp';
import { convertBundle } from '../../src/convert/convert.ts';
import { openBundle, type Bundle } from '../../src/model/bundle.ts';
import { FromageGraphs } from '../../src/model/graphs.ts';
import { importPickle } from '../../src/retrieval/import-pickle.ts';
import type { RetrievalBackend, RetrievalCandidate, RetrievedImage } from '../../src/model/retrieval-backend.ts';
import { FIXTURES, refJson, refTensor } from './reference.ts';

export type Variant = 'vis1' | 'vis4';

/** Converts the fixture checkpoints (fp32) into a fresh temp bundle; returns its dir and a cleanup. */
export async function convertFixtureBundle(variant: Variant): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const tmp = await mkdtemp(join(tmpdir(), `fromage-bundle-${variant}-`));
  const dir = await convertFixtureBundleInto(join(tmp, 'bundle'), variant);
  return { dir, cleanup: () => rm(tmp, { recursive: true, force: true }) };
}

/** Converts the fixture checkpoints (fp32 unless `weights` says otherwise) into `dir` (created); returns `dir`. */
export async function convertFixtureBundleInto(dir: string, variant: Variant = 'vis1', weights: 'fp32' | 'int4' = 'fp32'): Promise<string> {
  await convertBundle({
    optDir: join(FIXTURES, 'facebook/opt-6.7b'),
    clipDir: join(FIXTURES, 'openai/clip-vit-large-patch14'),
    fromageDir: join(FIXTURES, variant === 'vis1' ? 'fromage_model' : 'fromage_model/fromage_vis4'),
    outDir: dir,
    weights,
    progress: { silent: true },
  });
  return dir;
}

/** The converted vis1 fixture bundle opened (one thread) with its graphs; `close` releases it and removes the files. */
export async function openFixtureModel(): Promise<{ bundle: Bundle; graphs: FromageGraphs; close: () => Promise<void> }> {
  const conv = await convertFixtureBundle('vis1');
  let bundle: Bundle;
  try {
    bundle = await openBundle(conv.dir, { threads: 1 });
  } catch (e) {
    await conv.cleanup();
    throw e;
  }
  const close = async (): Promise<void> => {
    await bundle.release();
    await conv.cleanup();
  };
  return { bundle, graphs: new FromageGraphs(bundle), close };
}

/**
 * Imports the vis1 CC3M-format fixture pickle into `dir`, its image URLs
 * (http://127.0.0.1:PORT/img/...) pointed at the loopback image server on `port`.
 */
export async function importFixtureIndex(dir: string, port: number): Promise<string> {
  await importPickle(join(FIXTURES, 'fromage_model/cc3m_embeddings.pkl'), dir, { silent: true });
  const urls = await readFile(join(dir, 'urls.txt'), 'utf8');
  await writeFile(join(dir, 'urls.txt'), urls.replaceAll('PORT', String(port)));
  return dir;
}

/**
 * What the end-to-end tests run the product on: the fixture checkpoints converted into
 * `work`/bundle, a loopback image server, and the fixture index imported into `work`/index with
 * its URLs on that server. The caller closes `images`.
 */
export async function fixtureBundleWithIndex(work: string): Promise<{ bundle: string; index: string; images: FixtureImages }> {
  const bundle = await convertFixtureBundleInto(join(work, 'bundle'));
  const images = await serveFixtureImages();
  try {
    const index = await importFixtureIndex(join(work, 'index'), images.port);
    return { bundle, index, images };
  } catch (e) {
    await images.close();
    throw e;
  }
}

export interface FixtureImages {
  port: number;
  server: Server;
  close: () => Promise<void>;
}

/** Serves test/fixtures/img at http://127.0.0.1:PORT/img/... */
export async function serveFixtureImages(): Promise<FixtureImages> {
  const root = join(FIXTURES, 'img');
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent((req.url ?? '/').split('?')[0]));
    if (!path.startsWith('/img/')) {
      res.writeHead(404).end('not found');
      return;
    }
    readFile(join(root, path.slice('/img/'.length)))
      .then((body) => res.writeHead(200, { 'content-type': path.endsWith('.png') ? 'image/png' : 'application/octet-stream' }).end(body))
      .catch(() => res.writeHead(404).end('not found'));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return { port, server, close: () => new Promise<void>((r) => server.close(() => r())) };
}

export function indexUrls(port: number): string[] {
  return refJson<{ paths: string[] }>('index.json').paths.map((p) => p.replace('PORT', String(port)));
}

/**
 * FROMAGe's retrieval over the reference emb_matrix: scores = emb_matrix @ emb, seen rows
 * -1000, top k; candidates fetched in order, non-images skipped (UnidentifiedImageError).
 */
export class ExactTestBackend implements RetrievalBackend {
  private readonly matrix: Float32Array;
  private readonly dim: number;
  constructor(variant: Variant, private readonly urls: readonly string[], private readonly fetchImages = true) {
    const t = refTensor(`index.${variant}.emb_matrix`);
    this.matrix = t.data;
    this.dim = t.shape[1];
  }
  async search(embedding: Float32Array, k: number, exclude: ReadonlySet<number>): Promise<RetrievalCandidate[]> {
    const rows = this.matrix.length / this.dim;
    const scored = Array.from({ length: rows }, (_, r) => {
      let s = 0;
      for (let j = 0; j < this.dim; j++) s += this.matrix[r * this.dim + j] * embedding[j];
      return { row: r, url: this.urls[r], score: exclude.has(r) ? s - 1000 : s };
    });
    return scored.sort((a, b) => b.score - a.score || a.row - b.row).slice(0, k);
  }
  async resolve(candidates: readonly RetrievalCandidate[], maxImages: number): Promise<{ images: RetrievedImage[]; attempted: number[] }> {
    const images: RetrievedImage[] = [];
    const attempted: number[] = [];
    for (const c of candidates) {
      attempted.push(c.row);
      if (!this.fetchImages) {
        images.push(c);
      } else {
        const body = Buffer.from(await (await fetch(c.url)).arrayBuffer());
        const ok = await sharp(body).metadata().then(() => true, () => false);
        if (ok) images.push({ ...c, data: body });
      }
      if (images.length === maxImages) break;
    }
    return { images, attempted };
  }
  async close(): Promise<void> {}
}

/** Imports the variant's cc3m_embeddings.pkl into `dir` with URLs pointing at the loopback server. */
export async function buildFixtureIndex(variant: Variant, dir: string, port: number): Promise<void> {
  const { importPickle } = await import('../../src/retrieval/import-pickle.ts');
  const { writeFile } = await import('node:fs/promises');
  await importPickle(join(FIXTURES, variant === 'vis1' ? 'fromage_model' : 'fromage_model/fromage_vis4', 'cc3m_embeddings.pkl'), dir, { silent: true });
  // urls.txt is one URL per line (src/retrieval/README.md); the pickle holds the PORT template.
  await writeFile(join(dir, 'urls.txt'), `${indexUrls(port).join('\n')}\n`);
}
