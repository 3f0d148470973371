/**
 * Reading the parts of an index directory: manifest, URL table, dead-row map, row reads.
 * URLs stay in one Buffer with an offset table: 2.6M JS strings would cost ~0.5 GB and
 * seconds to build, and search only ever needs a handful of them.
 */
import fs from 'node:fs';
import path from 'node:path';
import { INDEX_FILES, INDEX_FORMAT, INDEX_FORMAT_VERSION, IndexError, indexManifestSchema, type IndexManifest } from './format.ts';

export function readManifest(dir: string): IndexManifest {
  const file = path.join(dir, INDEX_FILES.manifest);
  if (!fs.existsSync(dir)) throw new IndexError(`index directory ${dir} does not exist (create one with \`fromage index import\` or \`fromage index build\`)`);
  if (!fs.existsSync(file)) throw new IndexError(`${dir} is not a retrieval index: ${INDEX_FILES.manifest} is missing (create one with \`fromage index import\` or \`fromage index build\`)`);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new IndexError(`${file} is not valid JSON (${(err as Error).message}); re-create the index`);
  }
  const parsed = indexManifestSchema.safeParse(raw);
  if (!parsed.success) {
    const f = (raw as { format?: unknown } | null)?.format;
    if (f !== INDEX_FORMAT) throw new IndexError(`${file} is not a fromage index manifest (format ${JSON.stringify(f)})`);
    throw new IndexError(`${file} is malformed: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  if (parsed.data.format_version !== INDEX_FORMAT_VERSION)
    throw new IndexError(`${file} has format version ${parsed.data.format_version}; this fromage reads version ${INDEX_FORMAT_VERSION} (re-import the index)`);
  return parsed.data;
}

export class UrlTable {
  private constructor(
    private readonly text: Buffer,
    private readonly offsets: Float64Array,
  ) {}

  static load(dir: string, rows: number): UrlTable {
    const file = path.join(dir, INDEX_FILES.urls);
    if (!fs.existsSync(file)) throw new IndexError(`${file} is missing; the index is incomplete (re-create it)`);
    const text = fs.readFileSync(file);
    const offsets = new Float64Array(rows + 1);
    let pos = 0;
    for (let i = 0; i < rows; i++) {
      const nl = text.indexOf(10, pos);
      if (nl < 0) throw new IndexError(`${file} has ${i} URLs but the manifest says ${rows} rows; the index is damaged (re-create it)`);
      offsets[i] = pos;
      pos = nl + 1;
    }
    offsets[rows] = pos;
    if (pos !== text.length) throw new IndexError(`${file} has more lines than the manifest's ${rows} rows; the index is damaged (re-create it)`);
    return new UrlTable(text, offsets);
  }

  get(row: number): string {
    return this.text.toString('utf8', this.offsets[row], this.offsets[row + 1] - 1);
  }
}

export function readDeadMap(dir: string, rows: number): Uint8Array | undefined {
  const file = path.join(dir, INDEX_FILES.dead);
  if (!fs.existsSync(file)) return undefined;
  const buf = fs.readFileSync(file);
  if (buf.length !== rows) throw new IndexError(`${file} has ${buf.length} entries for ${rows} rows; delete it and run \`fromage index prune\` again`);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
}

/** Positioned reads of single rows from rows.f32 (the fp32 re-rank reads only its shortlist). */
export class RowFile {
  private constructor(
    private readonly fd: number,
    readonly dim: number,
    readonly rows: number,
  ) {}

  static open(dir: string, rows: number, dim: number): RowFile {
    const file = path.join(dir, INDEX_FILES.rows);
    if (!fs.existsSync(file)) throw new IndexError(`${file} is missing; the index is incomplete (re-create it)`);
    const size = fs.statSync(file).size;
    if (size !== rows * dim * 4)
      throw new IndexError(`${file} is ${size} bytes, expected ${rows} x ${dim} float32 = ${rows * dim * 4}; the index is damaged or truncated (re-create it)`);
    return new RowFile(fs.openSync(file, 'r'), dim, rows);
  }

  readRow(row: number, into = new Float32Array(this.dim)): Float32Array {
    fs.readSync(this.fd, new Uint8Array(into.buffer, into.byteOffset, this.dim * 4), 0, this.dim * 4, row * this.dim * 4);
    return into;
  }

  /** Reads `count` rows starting at `first` into one array (sequential scans, loading). */
  readRange(first: number, count: number, into = new Float32Array(count * this.dim)): Float32Array {
    const bytes = new Uint8Array(into.buffer, into.byteOffset, count * this.dim * 4);
    let done = 0;
    while (done < bytes.length) {
      const n = fs.readSync(this.fd, bytes, done, bytes.length - done, first * this.dim * 4 + done);
      if (n === 0) throw new IndexError('rows.f32 ended early; the index is damaged (re-create it)');
      done += n;
    }
    return into;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
