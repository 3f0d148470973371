/**
 * `fromage chat` as a real process on the fixture bundle: it answers, and SIGTERM stops it
 * cleanly (intake closed, running answer finished, database closed, exit code 0).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertFixtureBundleInto } from '../model/helpers.ts';
import { spawnFromage, waitForOutput } from '../support/fromage-process.ts';

let work: string;
let bundle: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-signals-'));
  bundle = await convertFixtureBundleInto(join(work, 'bundle'));
}, 60_000);

afterAll(() => rm(work, { recursive: true, force: true }));

describe('fromage chat process', () => {
  it('answers on stdin and exits 0 on SIGTERM after closing down', async () => {
    const proc = spawnFromage('chat', { PATH: process.env.PATH ?? '', HOME: work, FROMAGE_BUNDLE: bundle, FROMAGE_DATA_DIR: join(work, 'data'), LOG_LEVEL: 'info', FROMAGE_THREADS: '1' });
    await waitForOutput(proc, /FROMAGe is ready/, proc.stdout, 45_000);
    proc.child.stdin.write('hello there\n');
    await waitForOutput(proc, /fromage> /, proc.stdout, 45_000);
    proc.child.kill('SIGTERM');
    expect(await proc.exited).toBe(0);
    expect(proc.stderr()).toMatch(/"msg":"stopping"/);
    expect(proc.stderr()).toMatch(/"msg":"stopped"/);
  }, 90_000);
});
