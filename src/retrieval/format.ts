/**
 * The on-disk retrieval index (format version 1): a manifest, L2-normalized float32 rows, one
 * URL per line, an optional dead-row map and an optional quantized search graph. Plain files so
 * an index can be inspected, merged and pruned without special tools.
 */
import { z } from 'zod';
import { UserFacingError } from '../conversation/errors.ts';

export const INDEX_FORMAT = 'fromage-index';
export const INDEX_FORMAT_VERSION = 1;

export const INDEX_FILES = {
  manifest: 'index.json',
  rows: 'rows.f32',
  urls: 'urls.txt',
  dead: 'dead.u8',
  searchGraph: 'search.onnx',
  searchData: 'search.onnx.data',
} as const;

export const indexManifestSchema = z.object({
  format: z.literal(INDEX_FORMAT),
  format_version: z.number().int(),
  rows: z.number().int().nonnegative(),
  dim: z.number().int().positive(),
  created: z.string(),
  /** Raw FROMAGe logit_scale recorded at import/build, if known (scores use exp of it). */
  logit_scale: z.number().optional(),
  /** Where the rows came from (pickle path, image folder, merged indexes). */
  source: z.string(),
  /** Folder a gallery was built from; its rows have file:// URLs (pass to ImageFetcher fileRoots). */
  gallery_root: z.string().optional(),
  /** Present when search.onnx exists: the quantization it holds. */
  quantized: z
    .object({
      bits: z.union([z.literal(4), z.literal(8)]),
      block_size: z.number().int().positive(),
    })
    .optional(),
});

export type IndexManifest = z.infer<typeof indexManifestSchema>;

/** An error the user can fix (bad path, bad file); the CLI prints only the message. */
export class IndexError extends UserFacingError {}
