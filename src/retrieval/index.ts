/** The retrieval API the runtime uses (see README.md in this folder). */
export { EmbeddingIndex, MultiIndex, type IndexMode, type OpenOptions, type SearchHit, type SearchOptions } from './embedding-index.ts';
export { IndexError, type IndexManifest } from './format.ts';
export { ImageFetcher, type FetchedImage, type FetchResult, type ImageFetcherOptions, type OriginalResult } from './fetch/image-fetcher.ts';
export type { FailureReason } from './fetch/guarded-get.ts';
export { resolveCandidates, type ResolvedImage, type ResolveOptions, type ResolveResult } from './resolve-candidates.ts';
