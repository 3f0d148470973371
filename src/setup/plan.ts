/**
 * The setup plan: each upstream repository pinned to a commit (from the lock, else from the
 * hub), each file classified by what is on disk, and whether the bundle is current. Reading
 * the plan writes nothing; `--dry-run` prints it and stops.
 */
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { HubClient, HubFile } from '../convert/hub/client.ts';
import { expectedDigest, INCOMPLETE_SUFFIX } from '../convert/hub/download.ts';
import { HubError } from '../convert/hub/errors.ts';
import { MANIFEST_FILE } from '../model/manifest.ts';
import type { WeightsDtype } from './convert-step.ts';
import { formatBytes } from './disk.ts';
import { SetupError } from './errors.ts';
import type { SetupLock } from './lock.ts';
import { repoDir, selectFiles, VIS4_SUBDIR, type UpstreamRepo, type UpstreamRole } from './upstream.ts';

/** verified: on disk and recorded; present: on disk, to hash; partial: resumable; missing. */
export type ItemState = 'verified' | 'present' | 'partial' | 'missing';

export interface PlanItem {
  role: UpstreamRole;
  repo: string;
  commit: string;
  file: HubFile;
  dest: string;
  /** `<repo>/<path>`: the key in the lock's `verified` table and in messages. */
  key: string;
  state: ItemState;
  partialBytes: number;
}

const LISTING_TRIES = 3;

async function withRetries<T>(fn: () => Promise<T>, delayMs: number): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof HubError) || !err.retryable || attempt >= LISTING_TRIES) throw err;
      await new Promise((r) => setTimeout(r, delayMs * attempt));
    }
  }
}

/** Pins each repository not in the lock yet by asking the hub; returns whether the lock changed. */
export async function pinRepos(client: HubClient, lock: SetupLock, repos: readonly UpstreamRepo[], retryDelayMs: number): Promise<boolean> {
  let changed = false;
  for (const spec of repos) {
    if (lock.repos[spec.repo]) continue;
    const snapshot = await withRetries(() => client.repoInfo(spec.repo, spec.revision), retryDelayMs);
    const { files, missing } = selectFiles(spec, snapshot.files);
    if (missing.length > 0)
      throw new SetupError(
        `${spec.repo}@${snapshot.commit.slice(0, 10)} on ${client.endpoint} lacks ${missing.join(', ')}; ` +
          'if HF_ENDPOINT is a mirror, it does not hold the whole repository (unset HF_ENDPOINT to use huggingface.co)',
      );
    lock.repos[spec.repo] = { revision: spec.revision, commit: snapshot.commit, files };
    changed = true;
  }
  return changed;
}

export function requireVariant(lock: SetupLock, repos: readonly UpstreamRepo[], visualTokens: number): void {
  const fromage = repos.find((r) => r.role === 'fromage');
  if (visualTokens === 4 && fromage && !lock.repos[fromage.repo].files.some((f) => f.path.startsWith(`${VIS4_SUBDIR}/`)))
    throw new SetupError(`the 4-visual-token FROMAGe model is not published in ${fromage.repo}; use --visual-tokens 1`);
}

export async function classify(upstreamDir: string, lock: SetupLock, repos: readonly UpstreamRepo[]): Promise<PlanItem[]> {
  const items: PlanItem[] = [];
  for (const spec of repos) {
    const pinned = lock.repos[spec.repo];
    for (const file of pinned.files) {
      const dest = join(upstreamDir, repoDir(spec.repo), file.path);
      const key = `${spec.repo}/${file.path}`;
      const item: PlanItem = { role: spec.role, repo: spec.repo, commit: pinned.commit, file, dest, key, state: 'missing', partialBytes: 0 };
      const st = await stat(dest).catch(() => undefined);
      if (st) {
        const rec = lock.verified[key];
        const current = rec && rec.size === st.size && rec.mtimeMs === st.mtimeMs && rec.digest === expectedDigest(file).hex;
        item.state = current ? 'verified' : 'present';
      } else {
        const partial = await stat(dest + INCOMPLETE_SUFFIX).catch(() => undefined);
        if (partial && partial.size <= file.size) {
          item.state = 'partial';
          item.partialBytes = partial.size;
        }
      }
      items.push(item);
    }
  }
  return items;
}

export function commitsOf(lock: SetupLock, repos: readonly UpstreamRepo[]): Record<string, string> {
  return Object.fromEntries(repos.map((r) => [r.repo, lock.repos[r.repo].commit]));
}

/** The bundle at `out` was converted by setup from these commits with these options. */
export function bundleIsCurrent(lock: SetupLock, out: string, weights: WeightsDtype, visualTokens: number, commits: Record<string, string>): boolean {
  const b = lock.bundle;
  if (!b || b.out !== out || b.weights !== weights || b.visualTokens !== visualTokens) return false;
  if (JSON.stringify(b.commits) !== JSON.stringify(commits)) return false;
  return existsSync(join(out, MANIFEST_FILE));
}

export function needsFetch(item: PlanItem): boolean {
  return item.state === 'missing' || item.state === 'partial';
}

export function planSummary(items: readonly PlanItem[], repos: readonly UpstreamRepo[], upstreamDir: string): string {
  const lines = [`Upstream files in ${upstreamDir}:`];
  for (const spec of repos) {
    const mine = items.filter((i) => i.repo === spec.repo);
    const todo = mine.filter(needsFetch);
    const bytes = todo.reduce((s, i) => s + i.file.size - i.partialBytes, 0);
    const status = todo.length === 0 ? 'all present' : `${todo.length} to fetch, ${formatBytes(bytes)}`;
    lines.push(`  ${spec.repo}@${mine[0]?.commit.slice(0, 10) ?? '?'}: ${mine.length} files, ${status}`);
  }
  return lines.join('\n');
}
