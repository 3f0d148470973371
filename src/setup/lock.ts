/**
 * The setup lock file (`<upstream>/setup-lock.json`): the commit each repository was pinned to
 * on the first run and the files taken from it, so a rerun fetches the same bytes without asking
 * the hub again; plus which local files were verified (size and mtime), so a rerun does not
 * re-hash 15 GB. Delete it to move to the repositories' newest commits.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import { SetupError } from './errors.ts';

export const LOCK_FILE = 'setup-lock.json';

const fileSchema = z.object({
  path: z.string(),
  size: z.number().int().nonnegative(),
  sha256: z.string().optional(),
  gitSha1: z.string().optional(),
});

const lockSchema = z.object({
  version: z.literal(1),
  endpoint: z.string(),
  repos: z.record(
    z.string(),
    z.object({ revision: z.string(), commit: z.string().regex(/^[0-9a-f]{40}$/), files: z.array(fileSchema) }),
  ),
  verified: z.record(z.string(), z.object({ size: z.number(), mtimeMs: z.number(), digest: z.string() })).default({}),
  /** The last bundle setup converted, and from which commits: a rerun with the same is a no-op. */
  bundle: z
    .object({ out: z.string(), weights: z.string(), visualTokens: z.number(), commits: z.record(z.string(), z.string()) })
    .optional(),
});

export type SetupLock = z.infer<typeof lockSchema>;

export function emptyLock(endpoint: string): SetupLock {
  return { version: 1, endpoint, repos: {}, verified: {} };
}

/** Reads the lock; a missing file is an empty lock, a damaged one is an error naming the fix. */
export async function readLock(path: string, endpoint: string): Promise<SetupLock> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyLock(endpoint);
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const parsed = lockSchema.safeParse(json);
  if (!parsed.success) {
    throw new SetupError(`${path} is damaged; delete it and rerun \`fromage setup\` (downloaded files are kept and re-verified)`);
  }
  return parsed.data;
}

/** Serialized, atomic writes: parallel downloads each record their file without clobbering. */
export class LockWriter {
  private chain: Promise<void> = Promise.resolve();

  constructor(
    readonly path: string,
    readonly lock: SetupLock,
  ) {}

  save(): Promise<void> {
    const snapshot = JSON.stringify(this.lock, null, 2) + '\n';
    this.chain = this.chain.then(async () => {
      await mkdir(dirname(this.path), { recursive: true });
      const tmp = `${this.path}.${process.pid}.tmp`;
      await writeFile(tmp, snapshot);
      await rename(tmp, this.path);
    });
    return this.chain;
  }
}
