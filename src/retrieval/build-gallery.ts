/**
 * `fromage index build`: embeds your own images with the bundle's vision graph (`ret_embs`,
 * the raw visual_fc output that FROMAGe's index holds) into an index directory. The inputs are
 * a folder (walked recursively, sorted) or a urls.txt. Rows are appended to partial files as
 * they are embedded and every input is recorded as done or skipped, so an interrupted build
 * resumes where it stopped.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import * as ort from 'onnxruntime-node';
import { readManifest as readBundleManifest } from '../model/bundle.ts';
import { preprocessImage, type PreprocessConfig } from '../model/preprocess.ts';
import { createProgress } from '../progress.ts';
import { ImageFetcher, type ImageFetcherOptions } from './fetch/image-fetcher.ts';
import { IndexError, type IndexManifest } from './format.ts';
import { IndexWriter } from './index-writer.ts';
import { withSearchGraph } from './quantized-search.ts';
import { z } from 'zod';

const IMAGE_EXT = new Set(['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff']);
const SKIPPED_FILE = 'skipped.partial.txt';
/** What a partial build was started with; resuming with anything else would mix embeddings. */
const BUILD_STATE_FILE = 'build.partial.json';

export interface BuildOptions {
  bundle: string;
  /** A folder of images or a text file of URLs (one per line, # comments). */
  images: string;
  out: string;
  /** For folders: public URL prefix the folder is served under (else file:// URLs). */
  baseUrl?: string;
  batchSize?: number;
  fetcher?: ImageFetcherOptions;
  threads?: number;
  silent?: boolean;
  /** Called with each skipped input and why (default: counted only). */
  onSkip?: (input: string, why: string) => void;
}

export interface BuildResult {
  manifest: IndexManifest;
  embedded: number;
  skipped: number;
  resumedFrom: number;
}

interface Input {
  /** What is stored in the index and served later. */
  url: string;
  load: () => Promise<Buffer | string>;
}

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else if (e.isFile() && IMAGE_EXT.has(path.extname(e.name).toLowerCase())) out.push(p);
  }
  return out;
}

function listInputs(images: string, baseUrl: string | undefined, fetcher: ImageFetcher): { inputs: Input[]; galleryRoot?: string } {
  if (!fs.existsSync(images)) throw new IndexError(`${images} does not exist; give a folder of images or a text file with one URL per line`);
  if (fs.statSync(images).isDirectory()) {
    const root = path.resolve(images);
    const files = walk(root);
    const inputs = files.map((file) => {
      const rel = path.relative(root, file).split(path.sep).map(encodeURIComponent).join('/');
      const url = baseUrl ? `${baseUrl.replace(/\/+$/, '')}/${rel}` : pathToFileURL(file).toString();
      return { url, load: () => fs.promises.readFile(file) };
    });
    return { inputs, ...(baseUrl ? {} : { galleryRoot: root }) };
  }
  const lines = fs.readFileSync(images, 'utf8').split(/\r?\n/).map((l) => l.trim());
  const inputs = lines
    .filter((l) => l.length > 0 && !l.startsWith('#'))
    .map((url) => ({
      url,
      load: async () => {
        const r = await fetcher.fetchOriginal(url);
        return r.ok ? r.data : `${r.reason}: ${r.detail}`;
      },
    }));
  return { inputs };
}

export async function buildGallery(o: BuildOptions): Promise<BuildResult> {
  const bundle = await readBundleManifest(o.bundle);
  const visionPath = path.join(o.bundle, bundle.graphs.vision);
  const dim = bundle.model.shared_emb_dim;
  const cfg: PreprocessConfig = {
    size: bundle.preprocess.size,
    cropSize: bundle.preprocess.crop_size,
    rescaleFactor: bundle.preprocess.rescale_factor,
    mean: bundle.preprocess.image_mean,
    std: bundle.preprocess.image_std,
  };
  const fetcher = new ImageFetcher(o.fetcher);
  const { inputs, galleryRoot } = listInputs(o.images, o.baseUrl, fetcher);
  if (inputs.length === 0) throw new IndexError(`${o.images} holds no images (looked for ${[...IMAGE_EXT].join(', ')}) or URLs`);

  // Resume: inputs already embedded or already skipped are not redone.
  const statePath = path.join(o.out, BUILD_STATE_FILE);
  const buildState = { bundle_id: bundle.id, dim, images: path.resolve(o.images) };
  if (fs.existsSync(statePath)) {
    const previous = readBuildState(statePath, o.out);
    if (previous.bundle_id !== buildState.bundle_id || previous.dim !== dim || previous.images !== buildState.images)
      throw new IndexError(
        `${o.out} holds an unfinished build of ${previous.images ?? '?'} with bundle ${previous.bundle_id ?? '?'}; resume it with the same --images and --bundle, or delete ${o.out} to start over`,
      );
  } else {
    fs.mkdirSync(o.out, { recursive: true });
    fs.writeFileSync(statePath, JSON.stringify(buildState));
  }
  const writer = IndexWriter.create(o.out, dim, { source: path.resolve(o.images), logitScale: bundle.model.logit_scale, galleryRoot, resume: true });
  const done = new Set(IndexWriter.partialUrls(o.out));
  const skippedFile = path.join(o.out, SKIPPED_FILE);
  for (const line of fs.existsSync(skippedFile) ? fs.readFileSync(skippedFile, 'utf8').split('\n') : []) if (line) done.add(line.split('\t')[0]);
  const resumedFrom = writer.rows;
  const todo = inputs.filter((i) => !done.has(i.url));

  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(visionPath, { graphOptimizationLevel: 'all', ...(o.threads ? { intraOpNumThreads: o.threads } : {}) });
  } catch (err) {
    writer.abort();
    throw new IndexError(`cannot load the vision graph ${visionPath} (${(err as Error).message.split('\n')[0]}); rebuild the bundle with \`fromage convert\``);
  }
  if (!session.outputNames.includes('ret_embs')) {
    writer.abort();
    await session.release();
    throw new IndexError(`${visionPath} has no ret_embs output; rebuild the bundle with \`fromage convert\``);
  }
  const S = cfg.cropSize;
  const batchSize = Math.max(1, o.batchSize ?? 8);
  const progress = createProgress('embed', inputs.length, { unit: 'images', silent: o.silent });
  let embedded = 0;
  let skipped = 0;
  const skip = (input: Input, why: string) => {
    skipped++;
    fs.appendFileSync(skippedFile, `${input.url}\t${why.replace(/[\t\n]/g, ' ')}\n`);
    o.onSkip?.(input.url, why);
  };
  try {
    for (let b = 0; b < todo.length; b += batchSize) {
      const batch = todo.slice(b, b + batchSize);
      const loaded = await Promise.all(batch.map((i) => i.load().catch((e: Error) => e.message)));
      const ok: Array<{ input: Input; pixels: Float32Array }> = [];
      for (let i = 0; i < batch.length; i++) {
        const data = loaded[i];
        if (typeof data === 'string') {
          skip(batch[i], data);
          continue;
        }
        try {
          ok.push({ input: batch[i], pixels: (await preprocessImage(data, cfg)).pixelValues });
        } catch (err) {
          skip(batch[i], (err as Error).message);
        }
      }
      if (ok.length > 0) {
        const px = new Float32Array(ok.length * 3 * S * S);
        ok.forEach((x, i) => px.set(x.pixels, i * 3 * S * S));
        const out = await session.run({ pixel_values: new ort.Tensor('float32', px, [ok.length, 3, S, S]) }, ['ret_embs']);
        const emb = out.ret_embs.data as Float32Array;
        ok.forEach((x, i) => writer.append(emb.subarray(i * dim, (i + 1) * dim), x.input.url));
        writer.flush();
        embedded += ok.length;
      }
      progress.update(inputs.length - todo.length + b + batch.length);
    }
  } catch (err) {
    writer.abort();
    await session.release();
    progress.stop();
    throw err;
  }
  progress.stop();
  await session.release();
  const written = writer.finish();
  fs.rmSync(skippedFile, { force: true });
  fs.rmSync(statePath, { force: true });
  const manifest = await withSearchGraph(o.out, written, { silent: o.silent });
  return { manifest, embedded, skipped: skipped + (done.size - resumedFrom), resumedFrom };
}

const buildStateSchema = z.object({ bundle_id: z.string(), dim: z.number(), images: z.string() }).partial();

/** The resume marker of an unfinished build; a damaged one says how to start over. */
function readBuildState(file: string, out: string): z.infer<typeof buildStateSchema> {
  try {
    return buildStateSchema.parse(JSON.parse(fs.readFileSync(file, 'utf8')));
  } catch {
    throw new IndexError(`${file} (the resume marker of an unfinished build) is damaged; delete ${out} to start over`);
  }
}
