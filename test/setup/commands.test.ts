import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { registerSetupCommands } from '../../src/setup/commands.ts';
import { FakeHub, fixtureRepos } from './fake-hub.ts';

let hub: FakeHub;
let work: string;
const saved = { ...process.env };

function program(): Command {
  const p = new Command('fromage').exitOverride();
  registerSetupCommands(p);
  return p;
}

beforeEach(async () => {
  hub = new FakeHub(fixtureRepos());
  await hub.start();
  work = await mkdtemp(join(tmpdir(), 'fromage-setup-cli-'));
  process.env.HF_ENDPOINT = hub.endpoint;
  process.env.FROMAGE_BUNDLE = join(work, 'checkpoints', 'fromage-opt-6.7b');
});

afterEach(async () => {
  vi.restoreAllMocks();
  process.env = { ...saved };
  await hub.stop();
  await rm(work, { recursive: true, force: true });
});

describe('fromage setup (CLI)', () => {
  it('--dry-run prints the pinned plan from HF_ENDPOINT and writes nothing', async () => {
    const out: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => (out.push(String(chunk)), true));
    const err: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => (err.push(String(chunk)), true));
    await program().parseAsync(['node', 'fromage', 'setup', '--dry-run', '--device', 'cuda']);
    const text = out.join('');
    // This machine has no CUDA provider: the warning comes before the plan.
    if (process.platform === 'linux') expect(err.join('')).toMatch(/warning: FROMAGE_DEVICE=cuda but .*running on CPU instead/);
    expect(text).toMatch(/Upstream files in .*checkpoints[\\/]upstream/);
    expect(text).toMatch(/openai\/clip-vit-large-patch14@[0-9a-f]{10}: 3 files, 3 to fetch/);
    expect(text).toMatch(/with fp16 weights/);
    expect(existsSync(join(work, 'checkpoints'))).toBe(false);
  });

  it('rejects an unknown weight format with a message naming the option', async () => {
    await expect(program().parseAsync(['node', 'fromage', 'setup', '--weights', 'int3'])).rejects.toThrow(/^--weights: /);
  });
});
