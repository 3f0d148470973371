/**
 * One file from the hub onto disk, verified: bytes go to `<dest>.incomplete`, an interrupted
 * transfer resumes with an HTTP Range request (within a run, and across runs since the partial
 * file stays), the digest is checked against the hub's metadata, and only then the file is
 * renamed into place. A file at `dest` is therefore always complete and verified.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, stat, truncate, unlink, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { HubClient, HubFile } from './client.ts';
import { header } from './client.ts';
import { ChecksumError, HubError } from './errors.ts';

export type DigestAlgorithm = 'sha256' | 'git-sha1';

export interface ExpectedDigest {
  algorithm: DigestAlgorithm;
  hex: string;
}

export interface DownloadTarget {
  repo: string;
  /** Commit id: pinned, so every byte comes from one snapshot. */
  commit: string;
  file: HubFile;
  dest: string;
}

export interface DownloadOptions {
  /** Tries after the first one for transient failures (dropped connection, 5xx). */
  retries?: number;
  retryDelayMs?: number;
  /** Called with byte deltas (negative when a server forces a restart from zero). */
  onProgress?: (delta: number) => void;
}

export interface DownloadResult {
  /** Bytes that were already in the partial file when this call started. */
  resumedFrom: number;
  /** How many GET requests were needed (1 = no interruption). */
  requests: number;
  digest: ExpectedDigest;
}

export const INCOMPLETE_SUFFIX = '.incomplete';

/** What to verify a hub file against: LFS sha256, else the git blob id. */
export function expectedDigest(file: HubFile): ExpectedDigest {
  if (file.sha256) return { algorithm: 'sha256', hex: file.sha256 };
  if (file.gitSha1) return { algorithm: 'git-sha1', hex: file.gitSha1 };
  throw new HubError(`${file.path}: the hub gives neither an LFS sha256 nor a git blob id, so it cannot be verified`);
}

/** A hash primed so that its digest is comparable to `algorithm` (git hashes a header first). */
export function createDigest(algorithm: DigestAlgorithm, size: number): Hash {
  if (algorithm === 'sha256') return createHash('sha256');
  return createHash('sha1').update(`blob ${size}\0`);
}

/** Feeds the first `length` bytes of a file (all of it when omitted) into `hash`. */
async function feedFile(path: string, hash: Hash, length?: number): Promise<void> {
  if (length === 0) return;
  const stream = createReadStream(path, length === undefined ? {} : { start: 0, end: length - 1 });
  for await (const chunk of stream) hash.update(chunk as Buffer);
}

export async function digestFile(path: string, algorithm: DigestAlgorithm, size: number): Promise<string> {
  const hash = createDigest(algorithm, size);
  await feedFile(path, hash);
  return hash.digest('hex');
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Parses `bytes START-END/TOTAL` and returns START. */
function rangeStart(contentRange: string | undefined): number | undefined {
  const m = contentRange && /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(contentRange.trim());
  return m ? Number(m[1]) : undefined;
}

export async function downloadVerified(client: HubClient, target: DownloadTarget, options: DownloadOptions = {}): Promise<DownloadResult> {
  const { repo, commit, file, dest } = target;
  const what = `${repo}/${file.path}`;
  const expected = expectedDigest(file);
  const partial = dest + INCOMPLETE_SUFFIX;
  const retries = options.retries ?? 5;
  const retryDelayMs = options.retryDelayMs ?? 500;
  let reported = 0;
  const report = (absolute: number) => {
    options.onProgress?.(absolute - reported);
    reported = absolute;
  };

  await mkdir(dirname(dest), { recursive: true });
  if (file.size === 0) await writeFile(partial, ''); // nothing to fetch, still verified and renamed
  let have = await sizeOf(partial);
  if (have > file.size) {
    await truncate(partial, 0);
    have = 0;
  }
  const resumedFrom = have;
  let requests = 0;

  for (let attempt = 0; ; attempt++) {
    const before = await sizeOf(partial);
    try {
      have = before;
      report(have);
      let digest: string;
      if (have === file.size) {
        digest = await digestFile(partial, expected.algorithm, file.size);
      } else {
        digest = await fetchRest(have);
      }
      if (digest !== expected.hex) {
        await unlink(partial).catch(() => undefined);
        report(0);
        throw new ChecksumError(what, expected.algorithm, expected.hex, digest);
      }
      await rename(partial, dest);
      return { resumedFrom, requests, digest: expected };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      // A full disk or a permission problem will not fix itself: fail now with the cause.
      const fatalFs = ['ENOSPC', 'EDQUOT', 'EACCES', 'EPERM', 'EROFS'].includes(code);
      const transient = err instanceof HubError ? err.retryable : !(err instanceof ChecksumError) && !fatalFs;
      if (!transient) throw err;
      // A try that moved bytes forward is not a failed try: a flaky link still finishes a 10 GB
      // file as long as each connection gets somewhere. Only tries in a row without progress count.
      if ((await sizeOf(partial)) > before) attempt = 0;
      if (attempt >= retries) throw err;
      await sleep(Math.min(retryDelayMs * 2 ** attempt, 30_000));
    }
  }

  /** GETs the bytes after `have`, appending to the partial file; returns the whole file's digest. */
  async function fetchRest(have: number): Promise<string> {
    const located = await client.resolve(repo, commit, file.path);
    if (located.size !== undefined && located.size !== file.size)
      throw new HubError(`${what}: the hub lists ${file.size} bytes but serves ${located.size}; rerun setup, or delete the setup lock file if the repository changed`, 409);
    if (located.commit && located.commit !== commit)
      throw new HubError(`${what}: asked for commit ${commit} but the hub served ${located.commit} (X-Repo-Commit); is HF_ENDPOINT a faithful mirror?`, 409);
    if (file.sha256 && located.etag && /^[0-9a-f]{64}$/.test(located.etag) && located.etag !== file.sha256)
      throw new HubError(`${what}: the hub lists sha256 ${file.sha256} but serves ${located.etag}`, 409);
    if (file.gitSha1 && located.etag && /^[0-9a-f]{40}$/.test(located.etag) && located.etag !== file.gitSha1)
      throw new HubError(`${what}: the hub lists blob ${file.gitSha1} but serves ${located.etag}`, 409);

    requests++;
    const res = await client.open(located.url, have, what, repo);
    let start: number;
    if (res.status === 416) {
      // The server cannot serve our offset: the partial is unusable, start over next try.
      await res.body.dump();
      await truncate(partial, 0);
      throw new HubError(`${what}: the server refused to resume at byte ${have}; restarting`);
    } else if (res.status === 200) {
      start = 0; // a server that ignores Range sends everything
    } else {
      start = rangeStart(header(res.headers, 'content-range')) ?? -1;
      if (start !== have) {
        await res.body.dump();
        await truncate(partial, 0);
        throw new HubError(`${what}: the server resumed at the wrong offset (${header(res.headers, 'content-range')}); restarting`);
      }
    }
    report(start);
    const hash = createDigest(expected.algorithm, file.size);
    await feedFile(partial, hash, start);
    let got = start;
    const count = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        got += chunk.length;
        if (got > file.size) return cb(new HubError(`${what}: the server sent more than the ${file.size} bytes listed`, 409));
        hash.update(chunk);
        report(got);
        cb(null, chunk);
      },
    });
    await pipeline(res.body, count, createWriteStream(partial, { flags: start === 0 ? 'w' : 'a' }));
    if (got < file.size) throw new HubError(`${what}: the connection closed after ${got} of ${file.size} bytes`);
    return hash.digest('hex');
  }
}
