/**
 * On-disk cache of fetched (already re-encoded) images, keyed by the SHA-256 of the URL, plus
 * a negative cache of URLs that failed, each with an expiry. Dead CC3M links are common; not
 * retrying one for an hour keeps a popular query from hammering the same dead hosts.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';

export interface CachedImage {
  data: Buffer;
  contentType: 'image/jpeg' | 'image/png' | 'image/webp';
  width: number;
  height: number;
}

const metaSchema = z.object({
  url: z.string(),
  contentType: z.enum(['image/jpeg', 'image/png', 'image/webp']),
  width: z.number().int().positive(),
  height: z.number().int().positive(),
  bytes: z.number().int().nonnegative(),
});

const negativeSchema = z.object({ url: z.string(), reason: z.string(), detail: z.string(), until: z.number() });
export type NegativeEntry = z.infer<typeof negativeSchema>;

export function urlKey(url: string): string {
  return createHash('sha256').update(url).digest('hex');
}

export class ImageCache {
  private readonly negativeMemory = new Map<string, NegativeEntry>();
  /** Bytes of cached images on disk; undefined until the first put scans the directory. */
  private bytes: number | undefined;
  private evicting: Promise<void> | undefined;

  constructor(
    private readonly dir: string | undefined,
    private readonly now: () => number = Date.now,
    /** Size bound of the image files; the least recently used go first. */
    private readonly maxBytes = 2 * 1024 ** 3,
  ) {
    if (dir) fs.mkdirSync(dir, { recursive: true });
  }

  private file(url: string, ext: string): string {
    const key = urlKey(url);
    // Two-level fan-out keeps directories small for millions of entries.
    return path.join(this.dir as string, key.slice(0, 2), `${key}${ext}`);
  }

  async get(url: string): Promise<CachedImage | undefined> {
    if (!this.dir) return undefined;
    try {
      const meta = metaSchema.parse(JSON.parse(await fs.promises.readFile(this.file(url, '.json'), 'utf8')));
      if (meta.url !== url) return undefined;
      const data = await fs.promises.readFile(this.file(url, '.img'));
      if (data.length !== meta.bytes) return undefined;
      // Recency for eviction: a hit makes the entry "new" again (best effort).
      const t = new Date(this.now());
      await fs.promises.utimes(this.file(url, '.img'), t, t).catch(() => undefined);
      return { data, contentType: meta.contentType, width: meta.width, height: meta.height };
    } catch {
      return undefined; // absent or damaged entries are simply misses
    }
  }

  async put(url: string, image: CachedImage): Promise<void> {
    if (!this.dir) return;
    const img = this.file(url, '.img');
    await fs.promises.mkdir(path.dirname(img), { recursive: true });
    // Data first, metadata last: a reader only trusts data whose metadata matches its length.
    await writeAtomic(img, image.data);
    const t = new Date(this.now());
    await fs.promises.utimes(img, t, t);
    const meta = { url, contentType: image.contentType, width: image.width, height: image.height, bytes: image.data.length };
    await writeAtomic(this.file(url, '.json'), Buffer.from(JSON.stringify(meta)));
    // The first put scans the directory (which then already holds this image); later puts add.
    if (this.bytes === undefined) this.bytes = (await this.scan()).reduce((n, e) => n + e.size, 0);
    else this.bytes += image.data.length;
    if (this.bytes > this.maxBytes) {
      this.evicting ??= this.evict().finally(() => {
        this.evicting = undefined;
      });
      await this.evicting;
    }
  }

  private async scan(): Promise<Array<{ file: string; size: number; mtime: number }>> {
    const dir = this.dir as string;
    const out: Array<{ file: string; size: number; mtime: number }> = [];
    for (const sub of await fs.promises.readdir(dir)) {
      const subdir = path.join(dir, sub);
      const names = await fs.promises.readdir(subdir).catch(() => [] as string[]);
      for (const name of names) {
        if (!name.endsWith('.img')) continue;
        const st = await fs.promises.stat(path.join(subdir, name)).catch(() => undefined);
        if (st) out.push({ file: path.join(subdir, name), size: st.size, mtime: st.mtimeMs });
      }
    }
    return out;
  }

  /** Deletes least recently used images until the cache is at 80% of its bound. */
  private async evict(): Promise<void> {
    const entries = (await this.scan()).sort((a, b) => a.mtime - b.mtime);
    let total = entries.reduce((n, e) => n + e.size, 0);
    for (const e of entries) {
      if (total <= this.maxBytes * 0.8) break;
      await fs.promises.rm(e.file.replace(/\.img$/, '.json'), { force: true });
      await fs.promises.rm(e.file, { force: true });
      total -= e.size;
    }
    this.bytes = total;
  }

  async getNegative(url: string): Promise<NegativeEntry | undefined> {
    const mem = this.negativeMemory.get(url);
    let entry = mem;
    if (!entry && this.dir) {
      try {
        entry = negativeSchema.parse(JSON.parse(await fs.promises.readFile(this.file(url, '.neg'), 'utf8')));
        if (entry.url !== url) entry = undefined;
      } catch {
        entry = undefined;
      }
    }
    if (!entry) return undefined;
    if (entry.until <= this.now()) {
      this.negativeMemory.delete(url);
      if (this.dir) await fs.promises.rm(this.file(url, '.neg'), { force: true });
      return undefined;
    }
    if (!mem) this.negativeMemory.set(url, entry);
    return entry;
  }

  async putNegative(url: string, reason: string, detail: string, ttlMs: number): Promise<void> {
    const entry = { url, reason, detail, until: this.now() + ttlMs };
    this.negativeMemory.set(url, entry);
    if (!this.dir) return;
    const file = this.file(url, '.neg');
    await fs.promises.mkdir(path.dirname(file), { recursive: true });
    await writeAtomic(file, Buffer.from(JSON.stringify(entry)));
  }
}

async function writeAtomic(file: string, data: Buffer): Promise<void> {
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  await fs.promises.writeFile(tmp, data);
  await fs.promises.rename(tmp, file);
}
