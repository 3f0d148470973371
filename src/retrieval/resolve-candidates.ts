/**
 * Turns a ranked candidate list into images the way FROMAGe does (try candidates in order,
 * skip the ones that fail to load, stop at max_img_per_ret) but bounded by a deadline instead
 * of a fixed top k+3, and fetching a few candidates ahead in parallel so one slow host does
 * not serialize the reply.
 */
import type { SearchHit } from './embedding-index.ts';
import type { FetchedImage, ImageFetcher } from './fetch/image-fetcher.ts';

export interface ResolvedImage extends FetchedImage {
  row: number;
  score: number;
  source?: string;
  indexRow?: number;
}

export interface ResolveOptions {
  maxImages: number;
  /** Absolute time (ms since the epoch) after which no more candidates are awaited. */
  deadline: number;
  /** Candidates fetched ahead of the one being awaited (default: maxImages + 1). */
  lookahead?: number;
  signal?: AbortSignal;
}

export interface ResolveResult {
  images: ResolvedImage[];
  /**
   * Rows FROMAGe would have attempted, in order: every candidate up to the last one needed.
   * Add them to the answer's `seen` set so a later [RET] pushes them down.
   */
  attempted: number[];
  /** True when the deadline cut the search short. */
  timedOut: boolean;
}

type Fetcher = Pick<ImageFetcher, 'fetch'>;

export async function resolveCandidates(fetcher: Fetcher, hits: readonly SearchHit[], options: ResolveOptions): Promise<ResolveResult> {
  const images: ResolvedImage[] = [];
  const attempted: number[] = [];
  if (options.maxImages <= 0 || hits.length === 0) return { images, attempted, timedOut: false };
  const controller = new AbortController();
  const onAbort = () => controller.abort();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  const lookahead = Math.max(1, options.lookahead ?? options.maxImages + 1);
  const started: Array<Promise<FetchedImage | null>> = [];
  const start = (i: number) => {
    if (i < hits.length && started[i] === undefined) started[i] = fetcher.fetch(hits[i].url, { signal: controller.signal }).catch(() => null);
  };
  let timedOut = false;
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<'deadline'>((resolve) => {
    timer = setTimeout(() => resolve('deadline'), Math.max(0, options.deadline - Date.now()));
  });
  try {
    for (let i = 0; i < hits.length && images.length < options.maxImages; i++) {
      for (let j = i; j < i + lookahead; j++) start(j);
      const outcome = await Promise.race([started[i], deadline]);
      if (outcome === 'deadline' || options.signal?.aborted) {
        timedOut = outcome === 'deadline';
        break;
      }
      attempted.push(hits[i].row);
      if (outcome)
        images.push({
          ...outcome,
          row: hits[i].row,
          score: hits[i].score,
          ...(hits[i].source ? { source: hits[i].source } : {}),
          ...(hits[i].indexRow !== undefined ? { indexRow: hits[i].indexRow } : {}),
        });
    }
  } finally {
    clearTimeout(timer);
    // Fetches started ahead but not needed are cancelled (they are not cached as failures).
    controller.abort();
    options.signal?.removeEventListener('abort', onAbort);
  }
  return { images, attempted, timedOut };
}
