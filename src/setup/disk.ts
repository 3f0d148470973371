/**
 * Free-space check before anything is written: a 15 GB download that dies at 90% on a full
 * disk wastes an hour. `statfs` is injectable so tests can simulate a small disk.
 */
import { stat, statfs as nodeStatfs } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

export interface FsSpace {
  /** Blocks available to unprivileged users. */
  bavail: number | bigint;
  bsize: number | bigint;
}

export type StatfsFn = (path: string) => Promise<FsSpace>;

export const defaultStatfs: StatfsFn = (path) => nodeStatfs(path);

/** Headroom on top of the estimate: the converter writes temporary files, logs grow. */
export const DISK_MARGIN_BYTES = 512 * 1024 * 1024;

/** The path itself if it exists, else its closest existing parent (where it would be created). */
export async function nearestExisting(path: string): Promise<string> {
  let p = resolve(path);
  while (true) {
    try {
      await stat(p);
      return p;
    } catch {
      const up = dirname(p);
      if (up === p) return p;
      p = up;
    }
  }
}

export interface SpaceNeed {
  /** Where the bytes go (need not exist yet). */
  path: string;
  bytes: number;
  what: string;
}

export interface SpaceShortage {
  path: string;
  needed: number;
  available: number;
  what: string[];
}

/** Binary units, as the progress bars print them. */
export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

/**
 * Sums the needs per filesystem (paths on one device share its free space) and returns those
 * that do not fit, margin included.
 */
export async function findShortages(needs: readonly SpaceNeed[], statfs: StatfsFn = defaultStatfs): Promise<SpaceShortage[]> {
  const byDevice = new Map<string, { path: string; bytes: number; what: string[] }>();
  for (const need of needs) {
    if (need.bytes <= 0) continue;
    const existing = await nearestExisting(need.path);
    const dev = String((await stat(existing)).dev);
    const entry = byDevice.get(dev) ?? { path: existing, bytes: 0, what: [] };
    entry.bytes += need.bytes;
    entry.what.push(`${need.what} ${formatBytes(need.bytes)}`);
    byDevice.set(dev, entry);
  }
  const short: SpaceShortage[] = [];
  for (const entry of byDevice.values()) {
    const fs = await statfs(entry.path);
    const available = Number(fs.bavail) * Number(fs.bsize);
    const needed = entry.bytes + DISK_MARGIN_BYTES;
    if (available < needed) short.push({ path: entry.path, needed, available, what: entry.what });
  }
  return short;
}
