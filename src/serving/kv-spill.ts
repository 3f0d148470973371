/**
 * The disk spill of kept KV caches: one file per entry under FROMAGE_DATA_DIR/kv, so an evicted
 * conversation, or any conversation after a restart, resumes with a file read instead of a
 * prefill. Everything here degrades to "no spill": a file that is not exactly what this bundle
 * wrote is removed and counts as a miss, and a full or unwritable disk skips the write.
 *
 * File: `<bundle tag>-<keys hash>.kv` =
 *   magic "FRMGKV\0\1" | u32 header bytes | u32 crc32(header) | header JSON | body
 * The header names the bundle, the codec, shape, length, every position key, and the body's
 * size and crc32. Files are written to a temporary name and renamed, so a reader never sees a
 * half-written one. The disk budget is kept least recently used first by mtime, which a read
 * refreshes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rename, rm, stat, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { z } from 'zod';
import { encodedBytes, KV_CODECS, type EncodedKv, type KvBody } from './kv-codec.ts';
import type { PositionKey } from './kv-types.ts';
import { commonPrefixLength } from './position-keys.ts';

/** The few file operations the spill needs; tests inject failures through it. */
export interface SpillFs {
  mkdir(dir: string): Promise<void>;
  list(dir: string): Promise<string[]>;
  stat(path: string): Promise<{ size: number; mtimeMs: number }>;
  /** Up to `length` bytes from `position`, at offset 0 of a fresh ArrayBuffer (typed views stay aligned). */
  read(path: string, position: number, length: number): Promise<Uint8Array>;
  write(path: string, parts: readonly Uint8Array[]): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  remove(path: string): Promise<void>;
  setTime(path: string, time: Date): Promise<void>;
}

export const nodeSpillFs: SpillFs = {
  async mkdir(dir) {
    await mkdir(dir, { recursive: true });
  },
  list: (dir) => readdir(dir),
  async stat(path) {
    const s = await stat(path);
    return { size: s.size, mtimeMs: s.mtimeMs };
  },
  async read(path, position, length) {
    const h = await open(path, 'r');
    try {
      const out = new Uint8Array(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await h.read(out, got, length - got, position + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return out.subarray(0, got);
    } finally {
      await h.close();
    }
  },
  async write(path, parts) {
    const h = await open(path, 'w');
    try {
      // An entry's body comes in one part per head and piece: gather them into few system calls.
      for (let i = 0; i < parts.length; i += 256) {
        const batch = parts.slice(i, i + 256);
        const total = batch.reduce((n, p) => n + p.length, 0);
        let done = (await h.writev(batch)).bytesWritten;
        if (done === total) continue;
        for (const part of batch) {
          // A short writev: finish part by part from where it stopped.
          if (done >= part.length) {
            done -= part.length;
            continue;
          }
          let at = done;
          done = 0;
          while (at < part.length) at += (await h.write(part, at, part.length - at)).bytesWritten;
        }
      }
    } finally {
      await h.close();
    }
  },
  rename: (from, to) => rename(from, to),
  remove: (path) => rm(path, { force: true }),
  setTime: (path, time) => utimes(path, time, time),
};

const MAGIC = new Uint8Array([0x46, 0x52, 0x4d, 0x47, 0x4b, 0x56, 0x00, 0x01]); // "FRMGKV" 0 1
const PREFIX_BYTES = 16;
/** Bumped when the body layout or the header's meaning changes: older files are then stale. */
export const SPILL_VERSION = 1;
const SUFFIX = '.kv';
/** A temporary file this old is a leftover of a crash, not a write in progress. */
const TMP_MAX_AGE_MS = 10 * 60 * 1000;

const headerSchema = z.object({
  v: z.literal(SPILL_VERSION),
  bundle: z.string(),
  codec: z.enum(KV_CODECS),
  layers: z.number().int().positive(),
  heads: z.number().int().positive(),
  headDim: z.number().int().positive(),
  length: z.number().int().positive(),
  keys: z.array(z.union([z.number().int(), z.string()])),
  bodyBytes: z.number().int().nonnegative(),
  bodyCrc: z.number().int().nonnegative(),
});
type SpillHeader = z.infer<typeof headerSchema>;

export interface SpillEntry {
  readonly name: string;
  readonly keys: readonly PositionKey[];
  readonly bytes: number;
  mtimeMs: number;
  readonly header: SpillHeader;
  readonly headerBytes: number;
}

export interface KvSpillOptions {
  /** FROMAGE_DATA_DIR/kv. */
  readonly dir: string;
  /** FROMAGE_KV_DISK_MB in bytes; files are removed oldest first to stay within it. */
  readonly budgetBytes: number;
  /** The bundle the caches belong to (its manifest id): other bundles' files are removed. */
  readonly bundleId: string;
  readonly fs?: SpillFs;
  /** Warnings (a failed write, an unusable directory); never thrown. */
  readonly warn?: (message: string) => void;
  readonly now?: () => number;
}

function errorCode(err: unknown): string {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : err instanceof Error ? err.message : String(err);
}

/** The file name tag of a bundle: names stay short and filesystem-safe whatever the id. */
export function bundleTag(bundleId: string): string {
  return createHash('sha256').update(bundleId).digest('hex').slice(0, 16);
}

export class KvSpill {
  private readonly fs: SpillFs;
  private readonly entries = new Map<string, SpillEntry>();
  private readonly tag: string;
  private writable = true;
  private used = 0;
  removedFiles = 0;
  writeErrors = 0;

  private constructor(private readonly options: KvSpillOptions) {
    this.fs = options.fs ?? nodeSpillFs;
    this.tag = bundleTag(options.bundleId);
  }

  /** Scans the directory (creating it); never rejects: an unusable directory means an empty, read-only spill. */
  static async open(options: KvSpillOptions): Promise<KvSpill> {
    const spill = new KvSpill(options);
    await spill.scan();
    return spill;
  }

  get bytes(): number {
    return this.used;
  }

  get count(): number {
    return this.entries.size;
  }

  get canWrite(): boolean {
    return this.writable;
  }

  private now(): number {
    return this.options.now?.() ?? Date.now();
  }

  private warn(message: string): void {
    this.options.warn?.(message);
  }

  private async scan(): Promise<void> {
    const { dir } = this.options;
    try {
      await this.fs.mkdir(dir);
    } catch (err) {
      this.writable = false;
      this.warn(`kept KV caches will not spill to ${dir}: cannot create it (${errorCode(err)})`);
    }
    let names: string[];
    try {
      names = await this.fs.list(dir);
    } catch {
      return;
    }
    for (const name of names.sort()) {
      if (name.endsWith('.tmp')) {
        await this.removeStaleTmp(name);
        continue;
      }
      if (!name.endsWith(SUFFIX)) continue; // not ours: leave it
      const entry = name.startsWith(`${this.tag}-`) ? await this.readHeader(name) : undefined;
      if (!entry) {
        await this.removeFile(name);
        continue;
      }
      this.entries.set(name, entry);
      this.used += entry.bytes;
    }
    // A budget lowered since the files were written: the least recently used go now.
    for (const entry of [...this.entries.values()].sort((x, y) => x.mtimeMs - y.mtimeMs)) {
      if (this.used <= this.options.budgetBytes) break;
      this.forget(entry);
      await this.removeFile(entry.name);
    }
  }

  private async removeStaleTmp(name: string): Promise<void> {
    try {
      const s = await this.fs.stat(join(this.options.dir, name));
      if (this.now() - s.mtimeMs > TMP_MAX_AGE_MS) await this.removeFile(name);
    } catch {
      // gone already
    }
  }

  private async removeFile(name: string): Promise<void> {
    try {
      await this.fs.remove(join(this.options.dir, name));
      this.removedFiles++;
    } catch {
      // A file we cannot remove is skipped all the same.
    }
  }

  /** The entry a file describes, or undefined when it is not a complete file of this bundle and version. */
  private async readHeader(name: string): Promise<SpillEntry | undefined> {
    const path = join(this.options.dir, name);
    try {
      const s = await this.fs.stat(path);
      const prefix = await this.fs.read(path, 0, PREFIX_BYTES);
      if (prefix.length < PREFIX_BYTES || MAGIC.some((b, i) => prefix[i] !== b)) return undefined;
      const view = new DataView(prefix.buffer, prefix.byteOffset, PREFIX_BYTES);
      const headerBytes = view.getUint32(8, true);
      if (PREFIX_BYTES + headerBytes > s.size) return undefined;
      const raw = await this.fs.read(path, PREFIX_BYTES, headerBytes);
      if (raw.length !== headerBytes || crc32(raw) !== view.getUint32(12, true)) return undefined;
      const parsed = headerSchema.safeParse(JSON.parse(new TextDecoder().decode(raw)));
      if (!parsed.success) return undefined;
      const h = parsed.data;
      if (h.bundle !== this.options.bundleId || h.keys.length !== h.length) return undefined;
      if (h.bodyBytes !== encodedBytes(h, h.length, h.codec)) return undefined;
      if (s.size !== PREFIX_BYTES + headerBytes + h.bodyBytes) return undefined; // truncated or padded
      return { name, keys: h.keys, bytes: s.size, mtimeMs: s.mtimeMs, header: h, headerBytes };
    } catch {
      return undefined;
    }
  }

  /** The spilled entry sharing the longest prefix with `keys` (at most `max` positions). */
  best(keys: readonly PositionKey[], max: number): { entry: SpillEntry; length: number } | undefined {
    let found: { entry: SpillEntry; length: number } | undefined;
    for (const entry of this.entries.values()) {
      const length = commonPrefixLength(entry.keys, keys, max);
      if (length > 0 && (!found || length > found.length || (length === found.length && entry.mtimeMs > found.entry.mtimeMs))) found = { entry, length };
    }
    return found;
  }

  /** Reads and checks an entry's body; a file that fails is removed and undefined returned. */
  async read(entry: SpillEntry): Promise<EncodedKv | undefined> {
    const path = join(this.options.dir, entry.name);
    const h = entry.header;
    let body: Uint8Array;
    try {
      body = await this.fs.read(path, PREFIX_BYTES + entry.headerBytes, h.bodyBytes);
    } catch {
      this.forget(entry);
      return undefined;
    }
    if (body.length !== h.bodyBytes || crc32(body) !== h.bodyCrc) {
      this.warn(`kept KV cache file ${entry.name} is damaged; removed (the prompt is prefilled instead)`);
      this.forget(entry);
      await this.removeFile(entry.name);
      return undefined;
    }
    const now = this.now();
    entry.mtimeMs = now;
    await this.fs.setTime(path, new Date(now)).catch(() => undefined);
    return { codec: h.codec, shape: { layers: h.layers, heads: h.heads, headDim: h.headDim }, length: h.length, data: body };
  }

  private forget(entry: SpillEntry): void {
    if (this.entries.delete(entry.name)) this.used -= entry.bytes;
  }

  /**
   * Writes `body` under `keys`, last used at `usedAtMs` (the file's mtime, for the disk LRU).
   * Returns whether the disk now holds these keys. Files that are a prefix of `keys` are
   * replaced; older files are removed to make room, never ones used more recently than this.
   */
  async write(keys: readonly PositionKey[], body: KvBody, usedAtMs: number): Promise<boolean> {
    if (!this.writable || keys.length !== body.length || body.length === 0) return false;
    const { dir } = this.options;
    for (const entry of this.entries.values()) {
      if (entry.keys.length >= keys.length && commonPrefixLength(entry.keys, keys) === keys.length) {
        // Already on disk (as itself or inside a longer entry): only its place in the LRU changes.
        if (usedAtMs > entry.mtimeMs) {
          entry.mtimeMs = usedAtMs;
          await this.fs.setTime(join(dir, entry.name), new Date(usedAtMs)).catch(() => undefined);
        }
        return true;
      }
    }
    const header: SpillHeader = {
      v: SPILL_VERSION,
      bundle: this.options.bundleId,
      codec: body.codec,
      layers: body.shape.layers,
      heads: body.shape.heads,
      headDim: body.shape.headDim,
      length: body.length,
      keys: [...keys],
      bodyBytes: body.byteLength,
      bodyCrc: body.parts.reduce((crc, part) => crc32(part, crc), 0),
    };
    const headerRaw = new TextEncoder().encode(JSON.stringify(header));
    const size = PREFIX_BYTES + headerRaw.length + body.byteLength;
    if (size > this.options.budgetBytes) return false;
    const name = `${this.tag}-${createHash('sha256').update(JSON.stringify(keys)).digest('hex').slice(0, 32)}${SUFFIX}`;
    const superseded = [...this.entries.values()].filter((e) => commonPrefixLength(e.keys, keys) === e.keys.length);
    const supersededBytes = superseded.reduce((n, e) => n + e.bytes, 0);
    let over = this.used - supersededBytes + size - this.options.budgetBytes;
    const victims: SpillEntry[] = [];
    if (over > 0) {
      const older = [...this.entries.values()].filter((e) => !superseded.includes(e) && e.mtimeMs <= usedAtMs).sort((a, b) => a.mtimeMs - b.mtimeMs);
      for (const e of older) {
        if (over <= 0) break;
        victims.push(e);
        over -= e.bytes;
      }
      if (over > 0) return false; // only more recently used files would have to go
    }
    for (const e of victims) {
      this.forget(e);
      await this.removeFile(e.name);
    }
    const prefix = new Uint8Array(PREFIX_BYTES);
    prefix.set(MAGIC);
    const view = new DataView(prefix.buffer);
    view.setUint32(8, headerRaw.length, true);
    view.setUint32(12, crc32(headerRaw), true);
    const tmp = `${name}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      await this.fs.write(join(dir, tmp), [prefix, headerRaw, ...body.parts]);
      await this.fs.rename(join(dir, tmp), join(dir, name));
    } catch (err) {
      this.writeErrors++;
      await this.fs.remove(join(dir, tmp)).catch(() => undefined);
      const code = errorCode(err);
      if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
        this.writable = false;
        this.warn(`kept KV caches will no longer spill to ${dir}: it is not writable (${code})`);
      } else {
        this.warn(`a kept KV cache was not spilled to ${dir} (${code}); it will be prefilled when needed`);
      }
      return false;
    }
    await this.fs.setTime(join(dir, name), new Date(usedAtMs)).catch(() => undefined);
    const old = this.entries.get(name);
    if (old) this.forget(old);
    this.entries.set(name, { name, keys: header.keys, bytes: size, mtimeMs: usedAtMs, header, headerBytes: headerRaw.length });
    this.used += size;
    for (const e of superseded) {
      if (e.name === name) continue;
      this.forget(e);
      await this.removeFile(e.name);
    }
    return true;
  }
}
