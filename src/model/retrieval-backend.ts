/**
 * What the runtime needs from retrieval when it resolves a [RET]: a ranked search that pushes
 * already-tried rows down, and a resolver that tries candidates in order. The real
 * implementation wraps src/retrieval (index-backend.ts); tests may pass their own.
 */

export interface RetrievalCandidate {
  readonly row: number;
  /** The row in its own index when several are loaded (`row` counts across all of them); names saved files. */
  readonly indexRow?: number;
  readonly url: string;
  /** exp(logit_scale) * cosine. */
  readonly score: number;
}

export interface RetrievedImage extends RetrievalCandidate {
  /** Absent when fetching is disabled (`--no-fetch`). */
  readonly data?: Buffer;
  readonly contentType?: string;
  readonly width?: number;
  readonly height?: number;
}

export interface ResolveResult {
  readonly images: readonly RetrievedImage[];
  /** Every row tried, in order (FROMAGe's seen_image_idx additions). */
  readonly attempted: readonly number[];
}

export interface RetrievalBackend {
  /** Best `k` rows for the embedding; rows in `exclude` rank after all others. */
  search(embedding: Float32Array, k: number, exclude: ReadonlySet<number>): Promise<readonly RetrievalCandidate[]>;
  /** Tries candidates in order until `maxImages` load. */
  resolve(candidates: readonly RetrievalCandidate[], maxImages: number, signal?: AbortSignal): Promise<ResolveResult>;
  close(): Promise<void>;
}
