/**
 * `fromage setup`: pin the upstream repositories, check disk space, download what is missing
 * (in parallel, resumable, verified), convert to a bundle, and say how to add the CC3M index.
 * Every step is skipped when its result is already there, so a rerun does nothing.
 */
import { rename, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { HubClient } from '../convert/hub/client.ts';
import { digestFile, downloadVerified, expectedDigest, INCOMPLETE_SUFFIX } from '../convert/hub/download.ts';
import { createProgress, type ProgressBar } from '../progress.ts';
import { cc3mInstructions } from './cc3m.ts';
import { defaultWeights, estimateBundleBytes, type ConvertFn, type Device, type WeightsDtype } from './convert-step.ts';
import { defaultStatfs, findShortages, formatBytes, type SpaceNeed, type StatfsFn } from './disk.ts';
import { SetupError } from './errors.ts';
import { LOCK_FILE, LockWriter, readLock, type SetupLock } from './lock.ts';
import { bundleIsCurrent, classify, commitsOf, needsFetch, pinRepos, planSummary, requireVariant, type PlanItem } from './plan.ts';
import { runPool } from './pool.ts';
import { claimUpstreamDir } from './single-run.ts';
import { repoDir, UPSTREAM, VIS4_SUBDIR, type UpstreamRepo, type UpstreamRole } from './upstream.ts';

export interface SetupOptions {
  /** Checkpoints folder; upstream files go to `<dir>/upstream`. */
  dir: string;
  /** Bundle folder to write (FROMAGE_BUNDLE). */
  out: string;
  device: Device;
  /** Defaults to int4 on CPU, fp16 on CUDA. */
  weights?: WeightsDtype;
  /** Which FROMAGe variant to convert: 1 (the paper's) or 4 visual tokens. */
  visualTokens?: 1 | 4;
  dryRun?: boolean;
  /** Parallel downloads. */
  jobs?: number;
  endpoint: string;
  token?: string;
  repos?: readonly UpstreamRepo[];
  statfs?: StatfsFn;
  /** The converter; setup fails with a clear message when none is given and nothing is current. */
  convert?: ConvertFn;
  /** Asked once before downloading; false cancels. */
  confirm?: (summary: string) => Promise<boolean>;
  print?: (line: string) => void;
  progress?: (label: string, total: number) => ProgressBar;
  retryDelayMs?: number;
  /** Print the CC3M index steps at the end (when no index is configured). */
  showIndexHelp?: boolean;
}

export type { PlanItem };

export interface SetupResult {
  outcome: 'up-to-date' | 'done' | 'dry-run' | 'cancelled';
  items: PlanItem[];
  downloaded: string[];
  /** Files already on disk that had to be hashed. */
  hashed: string[];
  converted: boolean;
  bundle: string;
  bytesToFetch: number;
}

/** Refuses before any byte is written when the downloads and the bundle do not fit. */
async function checkDiskSpace(upstreamDir: string, out: string, bytesToFetch: number, bundleBytes: number, weights: WeightsDtype, statfs: StatfsFn): Promise<void> {
  const needs: SpaceNeed[] = [
    { path: upstreamDir, bytes: bytesToFetch, what: 'downloads' },
    { path: out, bytes: bundleBytes, what: `${weights} bundle (estimate)` },
  ];
  const shortages = await findShortages(needs, statfs);
  if (shortages.length === 0) return;
  const s = shortages[0];
  throw new SetupError(
    `not enough disk space on ${s.path}: setup needs ${formatBytes(s.needed)} (${s.what.join(', ')}, plus margin) but ` +
      `${formatBytes(s.available)} is free. Free some space, or point --dir (downloads) and FROMAGE_BUNDLE (bundle) at a larger disk.`,
  );
}

function bundleEstimate(items: readonly PlanItem[], weights: WeightsDtype): number {
  const sourceBytes = (role: UpstreamRole, pattern: RegExp) =>
    items.filter((i) => i.role === role && pattern.test(i.file.path)).reduce((s, i) => s + i.file.size, 0);
  return estimateBundleBytes(sourceBytes('opt', /\.bin$/), sourceBytes('clip', /\.safetensors$/), weights);
}

/** Downloads in parallel, largest first, under one progress bar; `onVerified` after each file. */
async function downloadAll(client: HubClient, items: readonly PlanItem[], options: SetupOptions, onVerified: (item: PlanItem) => Promise<void>): Promise<void> {
  const totalBytes = items.reduce((s, i) => s + i.file.size, 0);
  const makeBar = options.progress ?? ((label, total) => createProgress(label, total, { unit: 'bytes' }));
  const bar = makeBar(`Downloading ${items.length} files`, totalBytes);
  let done = 0;
  try {
    await runPool([...items].sort((a, b) => b.file.size - a.file.size), options.jobs ?? 4, async (item) => {
      await downloadVerified(client, item, {
        retryDelayMs: options.retryDelayMs,
        onProgress: (delta) => {
          done += delta;
          bar.update(done, item.file.path);
        },
      });
      await onVerified(item);
    });
  } finally {
    bar.stop();
  }
}

/** Converts into `<out>.incomplete`, then swaps it in: the old bundle goes only once the new one is whole. */
async function convertToBundle(convert: ConvertFn, upstreamDir: string, repos: readonly UpstreamRepo[], out: string, weights: WeightsDtype, visualTokens: number): Promise<void> {
  const dirOf = (role: UpstreamRole) => join(upstreamDir, repoDir(repos.find((r) => r.role === role)!.repo));
  const staging = out + INCOMPLETE_SUFFIX;
  await rm(staging, { recursive: true, force: true });
  await convert({
    opt: dirOf('opt'),
    clip: dirOf('clip'),
    fromage: visualTokens === 4 ? join(dirOf('fromage'), VIS4_SUBDIR) : dirOf('fromage'),
    out: staging,
    weights,
  });
  await rm(out, { recursive: true, force: true });
  await rename(staging, out);
}

/** Records a file as verified (size and mtime), so later runs trust it without hashing. */
async function recordVerified(item: PlanItem, lock: SetupLock, writer: LockWriter): Promise<void> {
  const st = await stat(item.dest);
  lock.verified[item.key] = { size: st.size, mtimeMs: st.mtimeMs, digest: expectedDigest(item.file).hex };
  await writer.save();
}

/** Files on disk without a record (placed by hand, or the record was lost) are hashed before they are trusted. */
async function hashPresent(items: readonly PlanItem[], lock: SetupLock, writer: LockWriter, result: SetupResult): Promise<void> {
  for (const item of items) {
    const expected = expectedDigest(item.file);
    const digest = await digestFile(item.dest, expected.algorithm, item.file.size);
    if (digest !== expected.hex)
      throw new SetupError(`${item.dest} does not match ${item.key} at the pinned commit (${expected.algorithm} ${digest}, expected ${expected.hex}); delete it and rerun \`fromage setup\``);
    result.hashed.push(item.key);
    await recordVerified(item, lock, writer);
  }
}

export async function runSetup(options: SetupOptions): Promise<SetupResult> {
  const print = options.print ?? ((line: string) => process.stdout.write(`${line}\n`));
  const repos = options.repos ?? UPSTREAM;
  const weights = options.weights ?? defaultWeights(options.device);
  const visualTokens = options.visualTokens ?? 1;
  const out = resolve(options.out);
  const upstreamDir = resolve(options.dir, 'upstream');
  const lockPath = join(upstreamDir, LOCK_FILE);
  const lock = await readLock(lockPath, options.endpoint);
  const writer = new LockWriter(lockPath, lock);
  const client = new HubClient({ endpoint: options.endpoint, token: options.token });

  // 1. Plan: pin, classify, decide. Nothing is written yet (the lock only once pins are new).
  const pinnedNow = await pinRepos(client, lock, repos, options.retryDelayMs ?? 500);
  requireVariant(lock, repos, visualTokens);
  if (pinnedNow && !options.dryRun) await writer.save();
  const items = await classify(upstreamDir, lock, repos);
  const commits = commitsOf(lock, repos);
  const current = bundleIsCurrent(lock, out, weights, visualTokens, commits);
  const toFetch = items.filter(needsFetch);
  const toHash = items.filter((i) => i.state === 'present');
  const bytesToFetch = toFetch.reduce((s, i) => s + i.file.size - i.partialBytes, 0);
  const result: SetupResult = { outcome: 'done', items, downloaded: [], hashed: [], converted: false, bundle: out, bytesToFetch };

  if (toFetch.length === 0 && toHash.length === 0 && current) {
    print(`Everything is in place: bundle ${out} (${weights}) from ${Object.entries(commits).map(([r, c]) => `${r}@${c.slice(0, 10)}`).join(', ')}. Nothing to do.`);
    return { ...result, outcome: 'up-to-date' };
  }

  const bundleBytes = current ? 0 : bundleEstimate(items, weights);
  await checkDiskSpace(upstreamDir, out, bytesToFetch, bundleBytes, weights, options.statfs ?? defaultStatfs);
  print(planSummary(items, repos, upstreamDir));
  print(current ? `Bundle ${out} is current.` : `Then convert to ${out} with ${weights} weights (about ${formatBytes(bundleBytes)}).`);
  if (options.dryRun) return { ...result, outcome: 'dry-run' };
  if (bytesToFetch > 0 && options.confirm && !(await options.confirm(`Download ${formatBytes(bytesToFetch)} from ${options.endpoint} and convert it (${weights})?`))) {
    print('Cancelled; nothing was downloaded.');
    return { ...result, outcome: 'cancelled' };
  }

  // One setup at a time in this folder: two writers on one .incomplete file would corrupt it.
  const release = await claimUpstreamDir(upstreamDir);
  try {
    await hashPresent(toHash, lock, writer, result);
    if (toFetch.length > 0) {
      await downloadAll(client, toFetch, options, async (item) => {
        result.downloaded.push(item.key);
        await recordVerified(item, lock, writer);
      });
      print(`Downloaded and verified ${toFetch.length} files (${formatBytes(bytesToFetch)}).`);
    }
    if (!current) {
      if (!options.convert) throw new SetupError('the downloads are complete but no converter was given; run `fromage convert` by hand');
      print(`Converting to ${out} (${weights}); this takes a while for the full model.`);
      await convertToBundle(options.convert, upstreamDir, repos, out, weights, visualTokens);
      lock.bundle = { out, weights, visualTokens, commits };
      await writer.save();
      result.converted = true;
      print(`Bundle ready: ${out}`);
    }
  } finally {
    await release();
  }
  if (options.showIndexHelp) print(cc3mInstructions(options.dir, options.out));
  return result;
}
