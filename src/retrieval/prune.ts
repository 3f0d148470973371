/**
 * `fromage index prune`: checks every URL of an index and marks the dead ones in dead.u8 so
 * search skips them. CC3M links rot; about 2.6M of 3.3M lived in 2023. Requests are
 * rate-limited (a polite crawler, and most rows share a few CDNs) and progress is saved every
 * few hundred rows, so a prune of millions of URLs can be stopped and resumed.
 *
 * Only permanent failures mark a row dead (4xx other than 408/429, not an image, unknown host,
 * refused address); timeouts, 5xx and network errors leave it alive to be retried next time.
 */
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { createProgress } from '../progress.ts';
import { ImageFetcher, type ImageFetcherOptions, type OriginalResult } from './fetch/image-fetcher.ts';
import { INDEX_FILES } from './format.ts';
import { readDeadMap, readManifest, UrlTable } from './index-files.ts';

const STATE_FILE = 'prune.state.json';
const stateSchema = z.object({ rows: z.number().int(), next_row: z.number().int().nonnegative(), checked: z.number().int(), dead: z.number().int(), transient: z.number().int() });
type PruneState = z.infer<typeof stateSchema>;

export interface PruneOptions {
  /** Requests started per second (default 10). */
  rate?: number;
  /** Parallel requests (default 8). */
  concurrency?: number;
  fetcher?: ImageFetcherOptions;
  /** Start over instead of resuming a previous run. */
  restart?: boolean;
  /** Stop after this many rows (a batch of a long prune). */
  limit?: number;
  silent?: boolean;
  signal?: AbortSignal;
}

export interface PruneSummary {
  rows: number;
  checked: number;
  dead: number;
  transient: number;
  complete: boolean;
}

export function isPermanentFailure(r: OriginalResult): boolean {
  if (r.ok) return false;
  switch (r.reason) {
    case 'http-status':
      return r.status !== undefined && r.status >= 400 && r.status < 500 && r.status !== 408 && r.status !== 429;
    case 'not-an-image':
    case 'dns':
    case 'refused-address':
    case 'bad-url':
    case 'too-many-redirects':
    case 'too-large':
      return true;
    default:
      return false;
  }
}

/** Starts at most `rate` tasks per second. */
function rateLimiter(rate: number): () => Promise<void> {
  const interval = 1000 / rate;
  let next = Date.now();
  return async () => {
    const now = Date.now();
    const at = Math.max(now, next);
    next = at + interval;
    if (at > now) await new Promise((r) => setTimeout(r, at - now));
  };
}

export async function pruneIndex(dir: string, options: PruneOptions = {}): Promise<PruneSummary> {
  const manifest = readManifest(dir);
  const urls = UrlTable.load(dir, manifest.rows);
  const statePath = path.join(dir, STATE_FILE);
  const deadPath = path.join(dir, INDEX_FILES.dead);
  let state: PruneState = { rows: manifest.rows, next_row: 0, checked: 0, dead: 0, transient: 0 };
  let dead: Uint8Array = new Uint8Array(manifest.rows);
  if (!options.restart && fs.existsSync(statePath)) {
    const parsed = stateSchema.safeParse(JSON.parse(fs.readFileSync(statePath, 'utf8')));
    if (parsed.success && parsed.data.rows === manifest.rows) {
      state = parsed.data;
      dead = readDeadMap(dir, manifest.rows) ?? dead;
    }
  }
  const save = () => {
    fs.writeFileSync(`${deadPath}.tmp`, dead);
    fs.renameSync(`${deadPath}.tmp`, deadPath);
    fs.writeFileSync(statePath, JSON.stringify(state));
  };
  const concurrency = options.concurrency ?? 8;
  // No disk cache: a prune touches millions of images once and keeps none of them.
  const fetcher = new ImageFetcher({ ...options.fetcher, cacheDir: undefined, concurrency });
  const wait = rateLimiter(options.rate ?? 10);
  const end = Math.min(manifest.rows, options.limit !== undefined ? state.next_row + options.limit : manifest.rows);
  const progress = createProgress('prune', manifest.rows, { unit: 'rows', silent: options.silent });
  progress.update(state.next_row);
  const window = Math.max(concurrency * 4, 64);
  try {
    while (state.next_row < end && !options.signal?.aborted) {
      const first = state.next_row;
      const last = Math.min(end, first + window);
      const checks: Array<Promise<void>> = [];
      for (let row = first; row < last; row++) {
        await wait();
        if (options.signal?.aborted) break;
        checks.push(
          fetcher.probe(urls.get(row), { signal: options.signal }).then((r) => {
            if (!r.ok && r.reason === 'aborted') return;
            state.checked++;
            if (isPermanentFailure(r)) {
              if (dead[row] !== 1) state.dead++;
              dead[row] = 1;
            } else if (!r.ok) state.transient++;
            else if (dead[row] === 1) {
              dead[row] = 0; // came back to life
              state.dead--;
            }
          }),
        );
      }
      await Promise.all(checks);
      if (options.signal?.aborted) break;
      state.next_row = last;
      save();
      progress.update(last, `${state.dead} dead`);
    }
  } finally {
    progress.stop();
  }
  const complete = state.next_row >= manifest.rows;
  if (complete) {
    save();
    fs.rmSync(statePath, { force: true });
  }
  return { rows: manifest.rows, checked: state.checked, dead: state.dead, transient: state.transient, complete };
}
