/**
 * One loaded model: bundle, tokenizer, graphs, a visual-embedding cache keyed by image hash,
 * and an optional retrieval backend. Runs in-process (the CLI, tests) or inside the engine's
 * worker thread (the bot); everything here may block the thread it runs on.
 */
import { createHash } from 'node:crypto';
import { openBundle, type Bundle } from './bundle.ts';
import { generateForImagesAndTexts, type FromageCallbacks, type FromageResult, type FromageSettings } from './fromage.ts';
import { FromageGraphs, type VisionOutput } from './graphs.ts';
import { logLikelihood } from './loglik.ts';
import { preprocessImage, type LoadMode } from './preprocess.ts';
import type { PromptPiece } from './prompt.ts';
import type { RetrievalBackend } from './retrieval-backend.ts';
import type { SessionOptions } from './session.ts';
import { Batcher } from '../serving/batcher.ts';
import type { ServingStats } from './worker-protocol.ts';
import type { KvStore } from '../serving/kv-types.ts';
import { imageIdentity } from '../serving/position-keys.ts';

export type RuntimeItem =
  | { readonly type: 'text'; readonly text: string }
  | { readonly type: 'image'; readonly data: Buffer; readonly hash?: string; readonly load?: LoadMode };

export interface RuntimeOptions extends SessionOptions {
  /** Visual embeddings kept (by image content hash). Default 256. */
  readonly visualCacheSize?: number;
  /** Most decoded pixels accepted in a prompt image. */
  readonly maxImagePixels?: number;
}

/** How the worker serves several conversations (src/serving). */
export interface ServingOptions {
  /** Answers decoded together (FROMAGE_BATCH). */
  readonly batch: number;
  /** Kept KV caches reused across turns and conversations. */
  readonly store?: KvStore;
  readonly warn?: (message: string) => void;
}

export class FromageRuntime {
  readonly graphs: FromageGraphs;
  private readonly visualCache = new Map<string, VisionOutput>();
  private batcher: Batcher | undefined;
  private store: KvStore | undefined;

  private constructor(
    readonly bundle: Bundle,
    private retrieval: RetrievalBackend | undefined,
    private readonly options: RuntimeOptions,
  ) {
    this.graphs = new FromageGraphs(bundle);
  }

  static async open(bundleDir: string, options: RuntimeOptions = {}, retrieval?: RetrievalBackend): Promise<FromageRuntime> {
    return new FromageRuntime(await openBundle(bundleDir, options), retrieval, options);
  }

  get hasIndex(): boolean {
    return this.retrieval !== undefined;
  }

  /**
   * From now on answers decode in a shared batch (several jobs may run at once) and every
   * decoder call takes its turn with the batch's steps; with a store, prompts reuse kept prefixes.
   */
  enableServing(o: ServingOptions): void {
    if (this.batcher) throw new Error('serving is already enabled');
    const m = this.bundle.manifest.model;
    this.store = o.store;
    this.batcher = new Batcher({ graphs: this.graphs, maxRows: o.batch, maxPositions: m.max_positions, store: o.store, warn: o.warn });
  }

  servingStats(): ServingStats | undefined {
    if (!this.batcher) return undefined;
    return { batch: this.batcher.stats(), kv: this.store?.stats() };
  }

  /** The graphs decoder calls go through: gated by the batcher once serving is enabled. */
  private get decodeGraphs(): FromageGraphs {
    return this.batcher?.graphs ?? this.graphs;
  }

  setRetrieval(backend: RetrievalBackend | undefined): void {
    this.retrieval = backend;
  }

  /** Tokens `text` takes in a prompt, without the leading `</s>`. */
  countTokens(text: string): number {
    return this.bundle.tokenizer.encode(text, { addSpecialTokens: false }).length;
  }

  /** Preprocesses and encodes an image, cached by content hash (and load mode). */
  async encodeImage(data: Buffer, hash?: string, load: LoadMode = 'convert_rgb'): Promise<VisionOutput> {
    const key = `${hash ?? sha256(data)}:${load}`;
    const hit = this.visualCache.get(key);
    if (hit) {
      // Refresh its place in the LRU order.
      this.visualCache.delete(key);
      this.visualCache.set(key, hit);
      return hit;
    }
    const p = this.bundle.manifest.preprocess;
    const px = await preprocessImage(data, { size: p.size, cropSize: p.crop_size, rescaleFactor: p.rescale_factor, mean: p.image_mean, std: p.image_std }, load, {
      maxPixels: this.options.maxImagePixels,
    });
    const out = await this.graphs.encodeImage(px.pixelValues);
    this.visualCache.set(key, out);
    const max = this.options.visualCacheSize ?? 256;
    while (this.visualCache.size > max) this.visualCache.delete(this.visualCache.keys().next().value as string);
    return out;
  }

  async pieces(items: readonly RuntimeItem[]): Promise<PromptPiece[]> {
    const out: PromptPiece[] = [];
    for (const item of items) {
      if (item.type === 'text') out.push({ kind: 'text', text: item.text });
      else out.push({ kind: 'image', visualEmbs: (await this.encodeImage(item.data, item.hash, item.load)).visualEmbs });
    }
    return out;
  }

  async generate(items: readonly RuntimeItem[], settings: Partial<FromageSettings>, cb: FromageCallbacks = {}): Promise<FromageResult> {
    const ctx = { graphs: this.decodeGraphs, tokenizer: this.bundle.tokenizer, manifest: this.bundle.manifest, retrieval: this.retrieval, generate: this.batcher?.generate };
    const imageIdentities = items.flatMap((i) => (i.type === 'image' ? [imageIdentity(i.hash ?? sha256(i.data), i.load)] : []));
    return generateForImagesAndTexts(ctx, await this.pieces(items), settings, { imageIdentities, ...cb });
  }

  /** A retrieval prompt: the query with a trailing [RET] (added when absent), num_words 0. */
  async retrieve(query: string, count: number, cb: FromageCallbacks = {}): Promise<FromageResult> {
    const text = query.includes('[RET]') ? query : `${query} [RET]`;
    return this.generate([{ type: 'text', text }], { numWords: 0, maxNumRets: 1, maxImgPerRet: count }, cb);
  }

  async logLikelihood(items: readonly RuntimeItem[]): Promise<number> {
    return logLikelihood(this.decodeGraphs, this.bundle.tokenizer, await this.pieces(items), this.bundle.manifest.model.max_positions);
  }

  async close(): Promise<void> {
    await this.batcher?.close();
    await this.retrieval?.close();
    await this.bundle.release();
  }
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
