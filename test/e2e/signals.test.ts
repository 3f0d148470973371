/**
 * `fromage chat` as a real process on the fixture bundle: it answers, and SIGTERM stops it
 * cleanly (intake closed, running answer finished, database closed, exit code 0).
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertBundle } from '../../src/convert/convert.ts';

let work: string;
let bundle: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-signals-'));
  bundle = join(work, 'bundle');
  await convertBundle({
    optDir: 'test/fixtures/facebook/opt-6.7b',
    clipDir: 'test/fixtures/openai/clip-vit-large-patch14',
    fromageDir: 'test/fixtures/fromage_model',
    outDir: bundle,
    weights: 'fp32',
    progress: { silent: true },
  });
}, 60_000);

afterAll(() => rm(work, { recursive: true, force: true }));

describe('fromage chat process', () => {
  it('answers on stdin and exits 0 on SIGTERM after closing down', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'chat'], {
      env: { PATH: process.env.PATH ?? '', HOME: work, FROMAGE_BUNDLE: bundle, FROMAGE_DATA_DIR: join(work, 'data'), LOG_LEVEL: 'info', FROMAGE_THREADS: '1' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const waitFor = async (re: RegExp, what: () => string) => {
      const deadline = Date.now() + 45_000;
      while (!re.test(what())) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error(`timed out waiting for ${re}\nstdout:\n${out}\nstderr:\n${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await waitFor(/FROMAGe is ready/, () => out);
    child.stdin.write('hello there\n');
    await waitFor(/fromage> /, () => out);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(err).toMatch(/"msg":"stopping"/);
    expect(err).toMatch(/"msg":"stopped"/);
  }, 90_000);
});
