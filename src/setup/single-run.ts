/**
 * One setup at a time per upstream folder: two processes appending to the same `.incomplete`
 * file would corrupt it. The marker holds the owner's pid; a marker whose process is gone
 * (killed, machine rebooted) is taken over.
 */
import { mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SetupError } from './errors.ts';

export const RUNNING_FILE = 'setup.running';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Claims the folder; the returned function releases it. */
export async function claimUpstreamDir(dir: string): Promise<() => Promise<void>> {
  await mkdir(dir, { recursive: true });
  const marker = join(dir, RUNNING_FILE);
  for (let tries = 0; tries < 2; tries++) {
    try {
      await writeFile(marker, String(process.pid), { flag: 'wx' });
      return () => unlink(marker).catch(() => undefined);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number((await readFile(marker, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid))
        throw new SetupError(`another \`fromage setup\` (pid ${pid}) is working in ${dir}; wait for it, or stop it and rerun (downloads resume)`);
      await unlink(marker).catch(() => undefined);
    }
  }
  throw new SetupError(`cannot claim ${marker}; delete it if no setup is running`);
}
