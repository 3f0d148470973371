/**
 * Fetches index images safely for chat replies: SSRF-guarded, time- and size-bounded HTTP,
 * content verified by actually decoding it (sharp, with a pixel limit against decompression
 * bombs), re-encoded at a chat-friendly size, cached on disk, failures cached with a TTL,
 * and at most `concurrency` fetches at once.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import PQueue from 'p-queue';
import sharp, { type Metadata } from 'sharp';
import { AddressPolicy, systemResolver, type Resolver } from './address-policy.ts';
import { FetchFailure, guardedGet, type FailureReason } from './guarded-get.ts';
import { ImageCache, type CachedImage } from './image-cache.ts';

export interface ImageFetcherOptions {
  /** Directory of the on-disk cache; omitted = no disk cache (failures still cached in memory). */
  cacheDir?: string;
  /** Hosts, IPs or CIDRs exempt from the SSRF guard (FROMAGE_FETCH_ALLOW). */
  allow?: readonly string[];
  connectTimeoutMs?: number;
  totalTimeoutMs?: number;
  maxBytes?: number;
  maxRedirects?: number;
  /** sharp limitInputPixels: larger images are refused before being decoded. */
  maxPixels?: number;
  /** Longest side of the re-encoded image. */
  maxSide?: number;
  concurrency?: number;
  negativeTtlMs?: number;
  /** Bound on the cached image files (default 2 GiB); least recently used are evicted. */
  maxCacheBytes?: number;
  userAgent?: string;
  /**
   * Folders whose files may be served through file:// URLs (local galleries built with
   * `fromage index build --images FOLDER`); file URLs anywhere else are refused.
   */
  fileRoots?: readonly string[];
  /**
   * Told why a URL was refused (SSRF guard, a file outside the gallery folders, a malformed
   * URL), once per host: refusals are configuration problems the operator can fix, and the
   * reply only says no image loaded.
   */
  onRefused?: (host: string, detail: string) => void;
  /** DNS resolution (tests inject one that never leaves the machine). */
  resolver?: Resolver;
  now?: () => number;
}

export interface FetchedImage extends CachedImage {
  url: string;
  fromCache: boolean;
}

export type FetchResult = { ok: true; image: FetchedImage } | { ok: false; reason: FailureReason; detail: string; fromCache: boolean; status?: number };
export type OriginalResult = { ok: true; data: Buffer } | { ok: false; reason: FailureReason; detail: string; status?: number };

interface InFlight {
  promise: Promise<FetchResult>;
  controller: AbortController;
  waiters: number;
}

/** Formats accepted after decoding; vector and document formats (SVG, PDF) are refused. */
const RASTER_FORMATS = new Set(['jpeg', 'png', 'webp', 'gif', 'avif', 'heif', 'tiff', 'bmp']);

export class ImageFetcher {
  private readonly o: Required<Omit<ImageFetcherOptions, 'cacheDir' | 'allow' | 'fileRoots' | 'onRefused'>>;
  private readonly onRefused: ((host: string, detail: string) => void) | undefined;
  private readonly refusedHosts = new Set<string>();
  private readonly fileRoots: string[];
  private readonly policy: AddressPolicy;
  private readonly cache: ImageCache;
  private readonly queue: PQueue;
  private readonly inFlight = new Map<string, InFlight>();

  constructor(options: ImageFetcherOptions = {}) {
    this.o = {
      connectTimeoutMs: options.connectTimeoutMs ?? 5_000,
      totalTimeoutMs: options.totalTimeoutMs ?? 15_000,
      maxBytes: options.maxBytes ?? 20 * 1024 * 1024,
      maxRedirects: options.maxRedirects ?? 5,
      maxPixels: options.maxPixels ?? 40_000_000,
      maxSide: options.maxSide ?? 1024,
      concurrency: options.concurrency ?? 8,
      negativeTtlMs: options.negativeTtlMs ?? 60 * 60 * 1000,
      maxCacheBytes: options.maxCacheBytes ?? 2 * 1024 ** 3,
      userAgent: options.userAgent ?? 'fromage-bot (image retrieval; +https://github.com/kohjingyu/fromage)',
      resolver: options.resolver ?? systemResolver,
      now: options.now ?? Date.now,
    };
    this.policy = new AddressPolicy(options.allow ?? []);
    this.fileRoots = (options.fileRoots ?? []).map((r) => path.resolve(r));
    this.onRefused = options.onRefused;
    this.cache = new ImageCache(options.cacheDir, this.o.now, this.o.maxCacheBytes);
    this.queue = new PQueue({ concurrency: this.o.concurrency });
  }

  /** The image, or null when the URL gives no usable image (never throws for that). */
  async fetch(url: string, options: { signal?: AbortSignal } = {}): Promise<FetchedImage | null> {
    const r = await this.fetchDetailed(url, options);
    return r.ok ? r.image : null;
  }

  async fetchDetailed(url: string, options: { signal?: AbortSignal } = {}): Promise<FetchResult> {
    const aborted: FetchResult = { ok: false, reason: 'aborted', detail: 'cancelled', fromCache: false };
    if (options.signal?.aborted) return aborted;
    // Concurrent requests for one URL share one download (two [RET]s, two users); it is
    // cancelled only when every caller waiting on it has given up.
    let shared = this.inFlight.get(url);
    if (!shared) {
      const controller = new AbortController();
      const created: InFlight = { promise: Promise.resolve(aborted), controller, waiters: 0 };
      created.promise = this.fetchUncached(url, controller.signal).finally(() => {
        if (this.inFlight.get(url) === created) this.inFlight.delete(url);
      });
      this.inFlight.set(url, created);
      shared = created;
    }
    const entry = shared;
    entry.waiters++;
    const signal = options.signal;
    try {
      if (!signal) return this.reportRefusal(url, await entry.promise);
      return await new Promise<FetchResult>((resolve) => {
        const onAbort = () => resolve(aborted);
        signal.addEventListener('abort', onAbort, { once: true });
        entry.promise.then((r) => {
          signal.removeEventListener('abort', onAbort);
          resolve(this.reportRefusal(url, r));
        });
      });
    } finally {
      if (--entry.waiters === 0) {
        // Nobody wants it any more: later callers start afresh instead of joining a cancelled one.
        if (this.inFlight.get(url) === entry) this.inFlight.delete(url);
        entry.controller.abort();
      }
    }
  }

  /** Passes a refusal (fresh or from the negative cache) to onRefused, once per host. */
  private reportRefusal(url: string, r: FetchResult): FetchResult {
    if (r.ok || !this.onRefused || (r.reason !== 'refused-address' && r.reason !== 'bad-url')) return r;
    const host = hostOf(url);
    if (this.refusedHosts.has(host)) return r;
    this.refusedHosts.add(host);
    this.onRefused(host, r.detail);
    return r;
  }

  private async fetchUncached(url: string, signal: AbortSignal | undefined): Promise<FetchResult> {
    const cached = await this.cache.get(url);
    if (cached) return { ok: true, image: { ...cached, url, fromCache: true } };
    const negative = await this.cache.getNegative(url);
    if (negative) return { ok: false, reason: negative.reason as FailureReason, detail: negative.detail, fromCache: true };
    const result = await this.queue.add(() => this.download(url, signal), { throwOnTimeout: true });
    try {
      if (result.ok) await this.cache.put(url, result.image);
      else if (result.reason !== 'aborted') await this.cache.putNegative(url, result.reason, result.detail, this.o.negativeTtlMs);
    } catch {
      // A full or read-only cache disk must not cost the user the image; it is only slower.
    }
    return result;
  }

  private async download(url: string, signal: AbortSignal | undefined): Promise<FetchResult> {
    const original = await this.original(url, signal);
    if (!original.ok) return { ...original, fromCache: false };
    try {
      const image = await this.reencode(original.data);
      return { ok: true, image: { ...image, url, fromCache: false } };
    } catch (err) {
      if (err instanceof FetchFailure) return { ok: false, reason: err.reason, detail: err.message, fromCache: false };
      return { ok: false, reason: 'not-an-image', detail: (err as Error).message, fromCache: false };
    }
  }

  /**
   * The bytes as served, after the same guard and limits but without decoding, re-encoding or
   * caching: `fromage index build` embeds originals, and `index prune` only needs liveness.
   */
  async fetchOriginal(url: string, options: { signal?: AbortSignal } = {}): Promise<OriginalResult> {
    return this.queue.add(() => this.original(url, options.signal), { throwOnTimeout: true });
  }

  /**
   * Whether the URL serves a decodable raster image, reading only the image header (no
   * decode, no re-encode, no cache): the cheap liveness check `index prune` runs millions of.
   */
  async probe(url: string, options: { signal?: AbortSignal } = {}): Promise<OriginalResult> {
    const r = await this.fetchOriginal(url, options);
    if (!r.ok) return r;
    try {
      const meta = await sharp(r.data, { limitInputPixels: this.o.maxPixels }).metadata();
      if (!meta.format || !RASTER_FORMATS.has(meta.format)) return { ok: false, reason: 'not-an-image', detail: `unsupported image format ${meta.format ?? 'unknown'}` };
      if ((meta.width ?? 0) * (meta.height ?? 0) > this.o.maxPixels) return { ok: false, reason: 'too-large', detail: `image exceeds the ${this.o.maxPixels}-pixel limit` };
    } catch (err) {
      return { ok: false, reason: 'not-an-image', detail: `not a decodable image (${(err as Error).message})` };
    }
    return r;
  }

  private async original(url: string, signal: AbortSignal | undefined): Promise<OriginalResult> {
    if (signal?.aborted) return { ok: false, reason: 'aborted', detail: 'cancelled before the fetch started' };
    if (url.startsWith('file:')) return this.readLocal(url);
    try {
      const res = await guardedGet(url, {
        policy: this.policy,
        resolver: this.o.resolver,
        connectTimeoutMs: this.o.connectTimeoutMs,
        totalTimeoutMs: this.o.totalTimeoutMs,
        maxBytes: this.o.maxBytes,
        maxRedirects: this.o.maxRedirects,
        userAgent: this.o.userAgent,
        signal,
      });
      return { ok: true, data: res.body };
    } catch (err) {
      if (err instanceof FetchFailure) return { ok: false, reason: err.reason, detail: err.message, ...(err.status ? { status: err.status } : {}) };
      return { ok: false, reason: 'network', detail: (err as Error).message };
    }
  }

  private async readLocal(url: string): Promise<OriginalResult> {
    let file: string;
    try {
      file = await fs.promises.realpath(fileURLToPath(url));
    } catch (err) {
      return { ok: false, reason: 'http-status', detail: `cannot open ${url}: ${(err as Error).message}`, status: 404 };
    }
    // realpath first, so a symlink inside a gallery cannot point outside it.
    const roots = await Promise.all(this.fileRoots.map((r) => fs.promises.realpath(r).catch(() => r)));
    if (!roots.some((r) => file === r || file.startsWith(r + path.sep)))
      return {
        ok: false,
        reason: 'bad-url',
        detail:
          this.fileRoots.length === 0
            ? `${url} is a local file and no gallery folder may be read; file:// URLs are served only from the folder an index was built from (its gallery_root)`
            : `${url} is outside the local gallery folders the fetcher may read (${this.fileRoots.join(', ')})`,
      };
    const stat = await fs.promises.stat(file);
    if (stat.size > this.o.maxBytes) return { ok: false, reason: 'too-large', detail: `${file} is ${stat.size} bytes, over the ${this.o.maxBytes}-byte limit` };
    return { ok: true, data: await fs.promises.readFile(file) };
  }

  /**
   * Decoding is the content check (an HTML error page served as .png fails here). The output
   * keeps PNG for images with transparency (JPEG would blacken it) and uses JPEG otherwise.
   */
  private async reencode(body: Buffer): Promise<CachedImage> {
    const options = { limitInputPixels: this.o.maxPixels, failOn: 'error' as const, pages: 1 };
    let meta: Metadata;
    try {
      meta = await sharp(body, options).metadata();
    } catch (err) {
      const m = (err as Error).message;
      if (/pixel limit/i.test(m)) throw new FetchFailure('too-large', `image exceeds the ${this.o.maxPixels}-pixel limit`);
      throw new FetchFailure('not-an-image', `not a decodable image (${m})`);
    }
    if (!meta.format || !RASTER_FORMATS.has(meta.format)) throw new FetchFailure('not-an-image', `unsupported image format ${meta.format ?? 'unknown'}`);
    const pipeline = sharp(body, options)
      .rotate() // apply EXIF orientation, as a browser would
      .resize({ width: this.o.maxSide, height: this.o.maxSide, fit: 'inside', withoutEnlargement: true });
    try {
      const keepAlpha = meta.hasAlpha === true;
      const { data, info } = keepAlpha
        ? await pipeline.png({ compressionLevel: 8 }).toBuffer({ resolveWithObject: true })
        : await pipeline.flatten({ background: '#ffffff' }).jpeg({ quality: 85, mozjpeg: true }).toBuffer({ resolveWithObject: true });
      return { data, contentType: keepAlpha ? 'image/png' : 'image/jpeg', width: info.width, height: info.height };
    } catch (err) {
      const m = (err as Error).message;
      if (/pixel limit/i.test(m)) throw new FetchFailure('too-large', `image exceeds the ${this.o.maxPixels}-pixel limit`);
      throw new FetchFailure('not-an-image', `image could not be decoded (${m})`);
    }
  }

  /** Waits for running fetches to finish. */
  async idle(): Promise<void> {
    await this.queue.onIdle();
  }
}

/** What a refusal is reported under: the URL's host; all local files, or all malformed URLs, count as one. */
function hostOf(url: string): string {
  if (url.startsWith('file:')) return 'local files';
  try {
    return new URL(url).host || 'malformed URLs';
  } catch {
    return 'malformed URLs';
  }
}
