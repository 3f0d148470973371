/**
 * Streams rows into a new index directory. Rows are normalized on the way in (FROMAGe divides
 * every embedding by its L2 norm before scoring), so search needs no per-row work later.
 * Files are written as `*.partial` and renamed by `finish()`, so a crashed import never leaves
 * something that looks like a complete index; `resume` reopens the partial files (index build).
 */
import fs from 'node:fs';
import path from 'node:path';
import { INDEX_FILES, INDEX_FORMAT, INDEX_FORMAT_VERSION, IndexError, type IndexManifest } from './format.ts';

const FLUSH_BYTES = 4 << 20;

export interface IndexWriterOptions {
  source: string;
  logitScale?: number;
  galleryRoot?: string;
  /** Keep rows already in `*.partial` files (a resumed build) instead of starting over. */
  resume?: boolean;
}

export class IndexWriter {
  private rowsFd: number;
  private urlsFd: number;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private urlChunks: string[] = [];
  private count: number;
  private finished = false;

  private constructor(
    readonly dir: string,
    readonly dim: number,
    private readonly options: IndexWriterOptions,
    resumed: { rows: number },
  ) {
    const rowsPartial = path.join(dir, `${INDEX_FILES.rows}.partial`);
    const urlsPartial = path.join(dir, `${INDEX_FILES.urls}.partial`);
    this.rowsFd = fs.openSync(rowsPartial, options.resume ? 'a' : 'w');
    this.urlsFd = fs.openSync(urlsPartial, options.resume ? 'a' : 'w');
    this.count = resumed.rows;
  }

  static create(dir: string, dim: number, options: IndexWriterOptions): IndexWriter {
    if (!Number.isInteger(dim) || dim <= 0) throw new IndexError(`embedding width must be a positive integer, got ${dim}`);
    fs.mkdirSync(dir, { recursive: true });
    const resumed = options.resume ? IndexWriter.truncateToConsistent(dir, dim) : { rows: 0 };
    return new IndexWriter(dir, dim, options, resumed);
  }

  /** Rows already written (including resumed ones). */
  get rows(): number {
    return this.count;
  }

  /** URLs already written, for a resumed build to skip done work. */
  static partialUrls(dir: string): string[] {
    const file = path.join(dir, `${INDEX_FILES.urls}.partial`);
    if (!fs.existsSync(file)) return [];
    return fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.length > 0);
  }

  /**
   * A crash can leave the two partial files at different row counts (or a torn last row);
   * cut both back to the rows they agree on.
   */
  private static truncateToConsistent(dir: string, dim: number): { rows: number } {
    const rowsFile = path.join(dir, `${INDEX_FILES.rows}.partial`);
    const urlsFile = path.join(dir, `${INDEX_FILES.urls}.partial`);
    if (!fs.existsSync(rowsFile) || !fs.existsSync(urlsFile)) {
      fs.writeFileSync(rowsFile, '');
      fs.writeFileSync(urlsFile, '');
      return { rows: 0 };
    }
    const byRows = Math.floor(fs.statSync(rowsFile).size / (dim * 4));
    const text = fs.readFileSync(urlsFile, 'utf8');
    const lines = text.split('\n');
    const complete = lines.length - 1; // the text after the last newline is '' or a torn line
    const rows = Math.min(byRows, complete);
    fs.truncateSync(rowsFile, rows * dim * 4);
    fs.writeFileSync(urlsFile, lines.slice(0, rows).map((l) => `${l}\n`).join(''));
    return { rows };
  }

  /** Appends one raw (unnormalized) embedding and its URL. */
  append(embedding: ArrayLike<number>, url: string): void {
    if (this.finished) throw new Error('IndexWriter: append after finish');
    if (embedding.length !== this.dim)
      throw new IndexError(`row ${this.count} has ${embedding.length} values, expected ${this.dim}`);
    if (/[\r\n]/.test(url)) throw new IndexError(`row ${this.count}: URL contains a line break: ${JSON.stringify(url.slice(0, 200))}`);
    const row = new Float32Array(this.dim);
    let ss = 0;
    for (let i = 0; i < this.dim; i++) {
      const v = Math.fround(embedding[i]);
      row[i] = v;
      ss += v * v;
    }
    const norm = Math.fround(Math.sqrt(ss));
    if (norm > 0) for (let i = 0; i < this.dim; i++) row[i] = row[i] / norm;
    this.pending.push(Buffer.from(row.buffer));
    this.pendingBytes += row.byteLength;
    this.urlChunks.push(url, '\n');
    this.count++;
    if (this.pendingBytes >= FLUSH_BYTES) this.flush();
  }

  /**
   * Appends `count` raw rows (row-major in `block`) and their URLs in one go: the import path,
   * where a per-row call would cost more than the arithmetic.
   */
  appendBlock(block: Float32Array, count: number, urls: readonly string[]): void {
    if (this.finished) throw new Error('IndexWriter: append after finish');
    const dim = this.dim;
    if (block.length < count * dim || urls.length !== count) throw new IndexError(`block of ${count} rows needs ${count * dim} values and ${count} URLs`);
    const out = new Float32Array(count * dim);
    for (let r = 0; r < count; r++) {
      const base = r * dim;
      let ss = 0;
      for (let i = 0; i < dim; i++) {
        const v = block[base + i];
        out[base + i] = v;
        ss += v * v;
      }
      const norm = Math.fround(Math.sqrt(ss));
      if (norm > 0) for (let i = 0; i < dim; i++) out[base + i] = out[base + i] / norm;
    }
    for (let r = 0; r < count; r++) {
      const url = urls[r];
      if (url.includes('\n') || url.includes('\r')) throw new IndexError(`row ${this.count + r}: URL contains a line break: ${JSON.stringify(url.slice(0, 200))}`);
      this.urlChunks.push(url, '\n');
    }
    this.pending.push(Buffer.from(out.buffer));
    this.pendingBytes += out.byteLength;
    this.count += count;
    if (this.pendingBytes >= FLUSH_BYTES) this.flush();
  }

  /** Appends a row that is already normalized (merging indexes). */
  appendNormalized(row: Float32Array, url: string): void {
    if (row.length !== this.dim) throw new IndexError(`row ${this.count} has ${row.length} values, expected ${this.dim}`);
    this.pending.push(Buffer.from(row.buffer, row.byteOffset, row.byteLength));
    this.pendingBytes += row.byteLength;
    this.urlChunks.push(url, '\n');
    this.count++;
    if (this.pendingBytes >= FLUSH_BYTES) this.flush();
  }

  flush(): void {
    if (this.pending.length) fs.writeSync(this.rowsFd, Buffer.concat(this.pending, this.pendingBytes));
    if (this.urlChunks.length) fs.writeSync(this.urlsFd, this.urlChunks.join(''));
    this.pending = [];
    this.pendingBytes = 0;
    this.urlChunks = [];
  }

  /** Flushes, renames the partial files into place and writes the manifest. */
  finish(extra: Partial<Pick<IndexManifest, 'quantized'>> = {}): IndexManifest {
    this.flush();
    fs.closeSync(this.rowsFd);
    fs.closeSync(this.urlsFd);
    this.finished = true;
    fs.renameSync(path.join(this.dir, `${INDEX_FILES.rows}.partial`), path.join(this.dir, INDEX_FILES.rows));
    fs.renameSync(path.join(this.dir, `${INDEX_FILES.urls}.partial`), path.join(this.dir, INDEX_FILES.urls));
    // A rebuilt index invalidates whatever prune and the quantizer wrote for the old rows.
    for (const stale of [INDEX_FILES.dead, INDEX_FILES.searchGraph, INDEX_FILES.searchData])
      fs.rmSync(path.join(this.dir, stale), { force: true });
    const manifest: IndexManifest = {
      format: INDEX_FORMAT,
      format_version: INDEX_FORMAT_VERSION,
      rows: this.count,
      dim: this.dim,
      created: new Date().toISOString(),
      source: this.options.source,
      ...(this.options.logitScale !== undefined ? { logit_scale: this.options.logitScale } : {}),
      ...(this.options.galleryRoot !== undefined ? { gallery_root: this.options.galleryRoot } : {}),
      ...extra,
    };
    writeManifest(this.dir, manifest);
    return manifest;
  }

  /** Closes without finishing (keeps the partial files for a resume). */
  abort(): void {
    if (this.finished) return;
    this.flush();
    fs.closeSync(this.rowsFd);
    fs.closeSync(this.urlsFd);
    this.finished = true;
  }
}

export function writeManifest(dir: string, manifest: IndexManifest): void {
  const tmp = path.join(dir, `${INDEX_FILES.manifest}.tmp`);
  fs.writeFileSync(tmp, `${JSON.stringify(manifest, null, 1)}\n`);
  fs.renameSync(tmp, path.join(dir, INDEX_FILES.manifest));
}
