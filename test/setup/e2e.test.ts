/**
 * The whole path a self-hoster takes, on loopback: `fromage setup` against the fake hub with the
 * real converter, then `fromage generate` on the bundle it produced. With fp32 weights the
 * answer must be the reference FROMAGe's token for token.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { registerModelCommands } from '../../src/model/commands.ts';
import { manifestSchema } from '../../src/model/manifest.ts';
import { convertWithBundleConverter } from '../../src/setup/convert-step.ts';
import { runSetup, type SetupOptions } from '../../src/setup/run-setup.ts';
import { FakeHub, FIXTURES, fixtureRepos } from './fake-hub.ts';

let hub: FakeHub;
let work: string;
let out: string;

function setupOptions(extra: Partial<SetupOptions> = {}): SetupOptions {
  return {
    dir: join(work, 'checkpoints'),
    out,
    device: 'cpu',
    endpoint: hub.endpoint,
    convert: convertWithBundleConverter,
    print: () => {},
    progress: () => ({ update() {}, increment() {}, setTotal() {}, stop() {} }),
    ...extra,
  };
}

/** `fromage generate --json` through the real command, stdout captured. */
async function generate(caseFile: string): Promise<{ generated_ids: number[]; outputs: unknown[] }> {
  const program = new Command('fromage').exitOverride();
  registerModelCommands(program);
  const lines: string[] = [];
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => (lines.push(String(chunk)), true));
  try {
    await program.parseAsync(['node', 'fromage', 'generate', '--bundle', out, '--input', caseFile, '--no-fetch', '--json']);
  } finally {
    spy.mockRestore();
  }
  return JSON.parse(lines.join(''));
}

beforeAll(async () => {
  hub = new FakeHub(fixtureRepos());
  await hub.start();
  work = await mkdtemp(join(tmpdir(), 'fromage-setup-e2e-'));
  out = join(work, 'checkpoints', 'fromage-tiny');
});

afterAll(async () => {
  await hub.stop();
  await rm(work, { recursive: true, force: true });
});

describe('fromage setup end to end', () => {
  const reference = JSON.parse(readFileSync(join(FIXTURES, 'reference/fromage_cases.json'), 'utf8')).vis1.i_image_qa;
  const caseFile = () => join(work, 'case.json');

  it('ends in a bundle (int4 on CPU) that answers `fromage generate`', async () => {
    const result = await runSetup(setupOptions());
    expect(result.converted).toBe(true);
    const manifest = manifestSchema.parse(JSON.parse(await readFile(join(out, 'fromage.json'), 'utf8')));
    expect(manifest.weights.dtype).toBe('int4');
    for (const g of Object.values(manifest.graphs)) expect(existsSync(join(out, g))).toBe(true);

    const prompt = reference.prompts.map((p: { image?: string; text?: string; load?: string }) => (p.image ? { ...p, image: join(FIXTURES, p.image) } : p));
    await writeFile(caseFile(), JSON.stringify({ prompt, ...reference.kwargs }));
    const answer = await generate(caseFile());
    expect(answer.generated_ids.length).toBeGreaterThan(0);
    expect(answer.generated_ids.length).toBeLessThanOrEqual(reference.kwargs.num_words);
  });

  it('reconverted with fp32 weights (no download), answers exactly as the reference FROMAGe', async () => {
    hub.requests.length = 0;
    const result = await runSetup(setupOptions({ weights: 'fp32' }));
    expect(result.downloaded).toEqual([]);
    expect(hub.requests).toEqual([]);
    const answer = await generate(caseFile());
    expect(answer.generated_ids).toEqual(reference.generated_ids);
  });
});
