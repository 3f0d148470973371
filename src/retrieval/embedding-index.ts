/**
 * One retrieval index directory, searched the way FROMAGe scores it: exp(logit_scale) times
 * the cosine between each row and the [RET] embedding, rows attempted earlier pushed down by
 * 1000 (`scores[seen] -= 1000`), best first.
 *
 * Large indexes keep only the quantized copy resident (an 8-bit MatMulNBits initializer inside
 * search.onnx, a quarter of the fp32 size) and re-rank a shortlist with fp32 rows read from
 * disk, so a 2.6M-row CC3M index needs ~0.7 GB of RAM instead of 2.7 GB.
 */
import fs from 'node:fs';
import path from 'node:path';
import { INDEX_FILES, IndexError, type IndexManifest } from './format.ts';
import { readDeadMap, readManifest, RowFile, UrlTable } from './index-files.ts';
import { l2normalize, scoreRows, TopK } from './topk.ts';

export interface SearchHit {
  /** Row number (in a MultiIndex: offset by the rows of the indexes before it). */
  row: number;
  url: string;
  /** exp(logit_scale) * cosine, minus 1000 for excluded rows. */
  score: number;
  /** Index directory the hit came from (set by MultiIndex). */
  source?: string;
  /** The row in that index's own numbering (set by MultiIndex; `row` is then the combined one). */
  indexRow?: number;
}

export interface SearchOptions {
  /** Rows already attempted in this answer: ranked after all others, FROMAGe's `-= 1000`. */
  exclude?: ReadonlySet<number>;
  /** Force the exact fp32 scan. */
  exact?: boolean;
}

export type IndexMode = 'auto' | 'exact' | 'quantized';

export interface OpenOptions {
  /** Raw FROMAGe logit_scale (bundle manifest `model.logit_scale`). */
  logitScale?: number;
  mode?: IndexMode;
  /** Largest fp32 matrix kept in memory for exact search (bytes); larger ones stream from disk. */
  residentLimitBytes?: number;
  /** Threads for the quantized search session (0 = onnxruntime's default). */
  threads?: number;
}

/** Finds candidate rows fast but approximately; they are re-scored exactly afterwards. */
export interface Shortlister {
  shortlist(query: Float32Array, n: number): Promise<Int32Array>;
  close(): Promise<void>;
}

/** Below this many rows an exact scan is faster than a session call plus re-rank. */
const QUANTIZED_MIN_ROWS = 50_000;
const DOWNWEIGHT = 1000;
const SCAN_CHUNK_ROWS = 32_768;

export class EmbeddingIndex {
  private resident?: Float32Array;

  private constructor(
    readonly dir: string,
    readonly manifest: IndexManifest,
    private readonly urls: UrlTable,
    private readonly rowFile: RowFile,
    private readonly dead: Uint8Array | undefined,
    private readonly scale: number,
    private readonly shortlister: Shortlister | undefined,
  ) {}

  static async open(dir: string, options: OpenOptions = {}): Promise<EmbeddingIndex> {
    const manifest = readManifest(dir);
    const { rows, dim } = manifest;
    const rowFile = RowFile.open(dir, rows, dim);
    try {
      const urls = UrlTable.load(dir, rows);
      const dead = readDeadMap(dir, rows);
      const logitScale = options.logitScale ?? manifest.logit_scale ?? 0;
      const mode = options.mode ?? 'auto';
      const hasGraph = manifest.quantized !== undefined && fs.existsSync(path.join(dir, INDEX_FILES.searchGraph));
      if (mode === 'quantized' && !hasGraph)
        throw new IndexError(`${dir} has no quantized search graph (${INDEX_FILES.searchGraph}); run \`fromage index quantize --index ${dir}\``);
      let shortlister: Shortlister | undefined;
      if (hasGraph && (mode === 'quantized' || (mode === 'auto' && rows >= QUANTIZED_MIN_ROWS))) {
        const { QuantizedSearch } = await import('./quantized-search.ts');
        shortlister = await QuantizedSearch.open(dir, manifest, { threads: options.threads });
      }
      const index = new EmbeddingIndex(dir, manifest, urls, rowFile, dead, Math.exp(logitScale), shortlister);
      const limit = options.residentLimitBytes ?? 1 << 30;
      if (!shortlister && rows * dim * 4 <= limit) index.resident = rowFile.readRange(0, rows);
      return index;
    } catch (err) {
      rowFile.close();
      throw err;
    }
  }

  get rows(): number {
    return this.manifest.rows;
  }

  get dim(): number {
    return this.manifest.dim;
  }

  /** Whether search uses the quantized shortlist (else an exact scan). */
  get quantized(): boolean {
    return this.shortlister !== undefined;
  }

  url(row: number): string {
    return this.urls.get(row);
  }

  /** Folder whose files this index's file:// URLs point into, if it is a local gallery. */
  get galleryRoot(): string | undefined {
    return this.manifest.gallery_root;
  }

  isDead(row: number): boolean {
    return this.dead !== undefined && this.dead[row] === 1;
  }

  async search(query: Float32Array | readonly number[], k: number, options: SearchOptions = {}): Promise<SearchHit[]> {
    if (query.length !== this.dim)
      throw new IndexError(`query has ${query.length} values but the index at ${this.dir} holds ${this.dim}-d embeddings (wrong bundle for this index?)`);
    for (let i = 0; i < query.length; i++)
      if (!Number.isFinite(query[i])) throw new IndexError(`query value ${i} is not a finite number`);
    const q = l2normalize(query);
    const kk = Math.min(Math.max(0, Math.floor(k)), this.rows);
    if (kk === 0) return [];
    const exclude = options.exclude ?? new Set<number>();
    const top = options.exact || !this.shortlister ? this.exactTop(q, kk, exclude) : await this.quantizedTop(q, kk, exclude);
    return top.map(({ row, score }) => ({ row, url: this.urls.get(row), score }));
  }

  private rowScore(row: number, dot: number, exclude: ReadonlySet<number>): number {
    const s = Math.fround(this.scale * dot);
    return exclude.has(row) ? s - DOWNWEIGHT : s;
  }

  private exactTop(q: Float32Array, k: number, exclude: ReadonlySet<number>): Array<{ row: number; score: number }> {
    const top = new TopK(k);
    const dim = this.dim;
    const visitFrom = (first: number) => (local: number, dot: number) => {
      const row = first + local;
      if (this.dead !== undefined && this.dead[row] === 1) return;
      top.push(row, this.rowScore(row, dot, exclude));
    };
    if (this.resident) {
      scoreRows(this.resident, dim, q, this.rows, visitFrom(0));
    } else {
      const chunk = new Float32Array(SCAN_CHUNK_ROWS * dim);
      for (let first = 0; first < this.rows; first += SCAN_CHUNK_ROWS) {
        const n = Math.min(SCAN_CHUNK_ROWS, this.rows - first);
        this.rowFile.readRange(first, n, chunk);
        scoreRows(chunk, dim, q, n, visitFrom(first));
      }
    }
    return top.entries();
  }

  /**
   * Shortlist with the quantized graph, re-score the shortlist in fp32. The shortlist grows
   * when dead or excluded rows crowd out the k live ones; past a limit an exact scan is cheaper.
   */
  private async quantizedTop(q: Float32Array, k: number, exclude: ReadonlySet<number>): Promise<Array<{ row: number; score: number }>> {
    const shortlister = this.shortlister as Shortlister;
    // 4-bit scores are coarser, so more candidates go to the (cheap) fp32 re-rank.
    const widen = this.manifest.quantized?.bits === 4 ? 2 : 1;
    let n = Math.min(this.rows, Math.max(4 * k, k + 64) * widen + exclude.size);
    const row = new Float32Array(this.dim);
    for (;;) {
      const rows = await shortlister.shortlist(q, n);
      const top = new TopK(k);
      let usable = 0;
      for (const r of rows) {
        if (this.dead !== undefined && this.dead[r] === 1) continue;
        this.rowFile.readRow(r, row);
        let dot = 0;
        for (let d = 0; d < this.dim; d++) dot += row[d] * q[d];
        if (!exclude.has(r)) usable++;
        top.push(r, this.rowScore(r, dot, exclude));
      }
      if (usable >= k || n >= this.rows) return top.entries();
      if (n >= 65_536) return this.exactTop(q, k, exclude);
      n = Math.min(this.rows, n * 8);
    }
  }

  async close(): Promise<void> {
    this.rowFile.close();
    await this.shortlister?.close();
  }
}

/** Several indexes searched as one; rows are offset so they stay unique across indexes. */
export class MultiIndex {
  private constructor(
    readonly indexes: EmbeddingIndex[],
    private readonly offsets: number[],
  ) {}

  static async open(dirs: readonly string[], options: OpenOptions = {}): Promise<MultiIndex> {
    const indexes: EmbeddingIndex[] = [];
    try {
      for (const dir of dirs) indexes.push(await EmbeddingIndex.open(dir, options));
    } catch (err) {
      await Promise.all(indexes.map((i) => i.close()));
      throw err;
    }
    const dims = new Set(indexes.map((i) => i.dim));
    if (dims.size > 1) {
      await Promise.all(indexes.map((i) => i.close()));
      throw new IndexError(`indexes have different embedding widths (${indexes.map((i) => `${i.dir}: ${i.dim}`).join(', ')}); they come from different models`);
    }
    const offsets: number[] = [];
    let total = 0;
    for (const i of indexes) {
      offsets.push(total);
      total += i.rows;
    }
    return new MultiIndex(indexes, offsets);
  }

  get rows(): number {
    return this.indexes.reduce((n, i) => n + i.rows, 0);
  }

  /** Embedding width (0 when there is no index). */
  get dim(): number {
    return this.indexes[0]?.dim ?? 0;
  }

  /** Local gallery folders, for ImageFetcher's `fileRoots`. */
  galleryRoots(): string[] {
    return this.indexes.flatMap((i) => (i.galleryRoot ? [i.galleryRoot] : []));
  }

  /** Maps a global row back to its index and local row. */
  locate(row: number): { index: EmbeddingIndex; row: number } | undefined {
    for (let i = this.indexes.length - 1; i >= 0; i--)
      if (row >= this.offsets[i]) return row - this.offsets[i] < this.indexes[i].rows ? { index: this.indexes[i], row: row - this.offsets[i] } : undefined;
    return undefined;
  }

  async search(query: Float32Array | readonly number[], k: number, options: SearchOptions = {}): Promise<SearchHit[]> {
    const all: SearchHit[] = [];
    for (let i = 0; i < this.indexes.length; i++) {
      const offset = this.offsets[i];
      const index = this.indexes[i];
      let exclude: Set<number> | undefined;
      if (options.exclude?.size) {
        exclude = new Set();
        for (const r of options.exclude) if (r >= offset && r < offset + index.rows) exclude.add(r - offset);
      }
      const hits = await index.search(query, k, { exact: options.exact, exclude });
      for (const h of hits) all.push({ ...h, row: h.row + offset, source: index.dir, indexRow: h.row });
    }
    all.sort((a, b) => b.score - a.score || a.row - b.row);
    return all.slice(0, Math.max(0, k));
  }

  async close(): Promise<void> {
    await Promise.all(this.indexes.map((i) => i.close()));
  }
}
