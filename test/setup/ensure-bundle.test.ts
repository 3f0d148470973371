import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ensureBundle } from '../../src/setup/ensure-bundle.ts';
import type { SetupOptions } from '../../src/setup/run-setup.ts';

let work: string;
const logger = pino({ level: 'silent' });

function config(extra: { FROMAGE_SETUP_YES?: boolean } = {}) {
  return {
    FROMAGE_BUNDLE: join(work, 'checkpoints', 'fromage-opt-6.7b'),
    FROMAGE_DEVICE: 'cpu' as const,
    FROMAGE_INDEX: [],
    FROMAGE_SETUP_YES: extra.FROMAGE_SETUP_YES ?? false,
    HF_ENDPOINT: 'http://127.0.0.1:9',
    HF_TOKEN: undefined,
  };
}

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-ensure-'));
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('ensureBundle (npm start without a bundle)', () => {
  it('is ready at once when the bundle exists, without asking', async () => {
    const c = config();
    await mkdir(c.FROMAGE_BUNDLE, { recursive: true });
    await writeFile(join(c.FROMAGE_BUNDLE, 'fromage.json'), '{}');
    const asked: string[] = [];
    const outcome = await ensureBundle(c, logger, { interactive: true, yes: false }, { ask: async (q) => (asked.push(q), true) });
    expect(outcome).toBe('ready');
    expect(asked).toEqual([]);
  });

  it('runs setup without asking on --yes or FROMAGE_SETUP_YES, into the configured bundle', async () => {
    for (const [c, yes] of [[config(), true], [config({ FROMAGE_SETUP_YES: true }), false]] as const) {
      const runs: SetupOptions[] = [];
      const outcome = await ensureBundle(c, logger, { interactive: false, yes }, { runSetup: async (o) => runs.push(o) });
      expect(outcome).toBe('ready');
      expect(runs).toHaveLength(1);
      expect(runs[0]).toMatchObject({ out: c.FROMAGE_BUNDLE, dir: join(work, 'checkpoints'), device: 'cpu', endpoint: 'http://127.0.0.1:9', showIndexHelp: true });
    }
  });

  it('asks on a terminal and runs setup on yes, declines on no', async () => {
    const runs: SetupOptions[] = [];
    const questions: string[] = [];
    const yes = await ensureBundle(config(), logger, { interactive: true, yes: false }, { ask: async (q) => (questions.push(q), true), runSetup: async (o) => runs.push(o) });
    expect(yes).toBe('ready');
    expect(questions[0]).toMatch(/No model bundle at .*fromage-opt-6\.7b\. Download FROMAGe \(about 15 GB from http:\/\/127\.0\.0\.1:9\)/);
    const no = await ensureBundle(config(), logger, { interactive: true, yes: false }, { ask: async () => false, runSetup: async (o) => runs.push(o) });
    expect(no).toBe('declined');
    expect(runs).toHaveLength(1);
  });

  it('declines without a terminal or --yes, and never starts a 15 GB download on its own', async () => {
    const runs: SetupOptions[] = [];
    const outcome = await ensureBundle(config(), logger, { interactive: false, yes: false }, { runSetup: async (o) => runs.push(o) });
    expect(outcome).toBe('declined');
    expect(runs).toEqual([]);
  });
});
