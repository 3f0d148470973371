import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ensureBundle } from '../../src/setup/ensure-bundle.ts';
import { runSetup, type SetupOptions } from '../../src/setup/run-setup.ts';
import { FakeHub, fixtureRepos } from './fake-hub.ts';

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
      const outcome = await ensureBundle(c, logger, { interactive: false, yes }, { runSetup: async (o) => (runs.push(o), { outcome: 'done' }) });
      expect(outcome).toBe('ready');
      expect(runs).toHaveLength(1);
      expect(runs[0]).toMatchObject({ out: c.FROMAGE_BUNDLE, dir: join(work, 'checkpoints'), device: 'cpu', endpoint: 'http://127.0.0.1:9', showIndexHelp: true });
    }
  });

  it("asks on a terminal with the plan's real download size, runs setup on yes, declines on no", async () => {
    const hub = new FakeHub(fixtureRepos());
    await hub.start();
    try {
      const c = { ...config(), HF_ENDPOINT: hub.endpoint };
      const questions: string[] = [];
      const printed: string[] = [];
      const no = await ensureBundle(c, logger, { interactive: true, yes: false }, { ask: async (q) => (questions.push(q), false), print: (l) => printed.push(l) });
      expect(no).toBe('declined');
      // The size comes from the hub's listing of the pinned files, not a fixed guess.
      expect(questions).toEqual([`No model bundle at ${c.FROMAGE_BUNDLE}. Download 722.2 KiB from ${hub.endpoint} and convert it (int4)?`]);
      expect(hub.downloads()).toEqual([]);
      expect(printed.join('\n')).toMatch(/Upstream files in /);

      const runs: SetupOptions[] = [];
      const yes = await ensureBundle(c, logger, { interactive: true, yes: false }, {
        ask: async () => true,
        // The real setup with the converter left out: it asks through the given question, then downloads.
        runSetup: async (o) => (runs.push(o), runSetup({ ...o, convert: undefined, print: () => {}, progress: () => ({ update() {}, increment() {}, setTotal() {}, stop() {} }) }).catch(() => ({ outcome: 'done' }))),
      });
      expect(yes).toBe('ready');
      expect(runs).toHaveLength(1);
      expect(hub.downloads().length).toBeGreaterThan(0);
    } finally {
      await hub.stop();
    }
  });

  it('logs nothing when setup is declined: the caller prints the one explanation', async () => {
    const lines: string[] = [];
    const sink = new Writable({ write: (chunk: Buffer, _e, cb) => (lines.push(chunk.toString()), cb()) });
    const outcome = await ensureBundle(config(), pino({ level: 'trace' }, sink), { interactive: false, yes: false });
    expect(outcome).toBe('declined');
    expect(lines).toEqual([]);
  });

  it('declines without a terminal or --yes, and never starts a 15 GB download on its own', async () => {
    const runs: SetupOptions[] = [];
    const outcome = await ensureBundle(config(), logger, { interactive: false, yes: false }, { runSetup: async (o) => (runs.push(o), { outcome: 'done' }) });
    expect(outcome).toBe('declined');
    expect(runs).toEqual([]);
  });
});
