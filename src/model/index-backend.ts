/**
 * The RetrievalBackend over src/retrieval: MultiIndex search (FROMAGe scoring and seen-row
 * down-weighting) and the SSRF-guarded ImageFetcher through resolveCandidates. With fetching
 * off (`--no-fetch`), every candidate counts as loadable. Every caller (the bot's worker,
 * `fromage retrieve`, `fromage generate`) opens retrieval here, so the gallery folders of the
 * loaded indexes always reach the fetcher: their file:// rows are readable, nothing else is.
 */
import { MultiIndex } from '../retrieval/embedding-index.ts';
import { ImageFetcher, type ImageFetcherOptions } from '../retrieval/fetch/image-fetcher.ts';
import { resolveCandidates } from '../retrieval/resolve-candidates.ts';
import type { RetrievalBackend, RetrievalCandidate, ResolveResult } from './retrieval-backend.ts';

export interface IndexBackendOptions {
  readonly indexDirs: readonly string[];
  /** The bundle's raw logit_scale. */
  readonly logitScale: number;
  /** false: no HTTP at all; the first candidates are returned without image data. */
  readonly fetch: boolean;
  readonly fetcher?: ImageFetcherOptions;
  /** Time allowed per [RET] to find its images (default 8 s). */
  readonly resolveTimeoutMs?: number;
  /** Where refused fetches are reported, once per host (default: nowhere). */
  readonly warn?: (message: string) => void;
}

export function refusalMessage(host: string, detail: string): string {
  return `retrieved images from ${host} are refused (${detail}); replies skip them. Further refusals for ${host} are not repeated.`;
}

export async function openIndexBackend(o: IndexBackendOptions): Promise<RetrievalBackend> {
  const index = await MultiIndex.open(o.indexDirs, { logitScale: o.logitScale });
  const warn = o.warn;
  const fetcher = o.fetch
    ? new ImageFetcher({
        ...o.fetcher,
        fileRoots: [...(o.fetcher?.fileRoots ?? []), ...index.galleryRoots()],
        ...(warn ? { onRefused: (host: string, detail: string) => warn(refusalMessage(host, detail)) } : {}),
      })
    : undefined;
  return {
    async search(embedding, k, exclude): Promise<RetrievalCandidate[]> {
      const hits = await index.search(embedding, k, { exclude });
      return hits.map((h) => ({ row: h.row, indexRow: h.indexRow, url: h.url, score: h.score }));
    },
    async resolve(candidates, maxImages, signal): Promise<ResolveResult> {
      if (!fetcher) {
        const images = candidates.slice(0, maxImages);
        return { images, attempted: images.map((c) => c.row) };
      }
      const r = await resolveCandidates(
        fetcher,
        candidates.map((c) => ({ ...c })),
        { maxImages, deadline: Date.now() + (o.resolveTimeoutMs ?? 8000), signal },
      );
      return {
        images: r.images.map((i) => ({ row: i.row, indexRow: i.indexRow, url: i.url, score: i.score, data: i.data, contentType: i.contentType, width: i.width, height: i.height })),
        attempted: r.attempted,
      };
    },
    close: () => index.close(),
  };
}
