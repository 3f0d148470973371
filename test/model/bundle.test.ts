import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { openBundle } from '../../src/model/bundle.ts';
import { missingCudaLibraries } from '../../src/model/session.ts';
import { BundleError } from '../../src/model/errors.ts';
import { FromageRuntime } from '../../src/model/runtime.ts';
import { convertFixtureBundle } from './helpers.ts';
import { FIXTURES } from './reference.ts';

let good: string;
let tmp: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  const conv = await convertFixtureBundle('vis1');
  good = conv.dir;
  cleanup = conv.cleanup;
  tmp = await mkdtemp(join(tmpdir(), 'fromage-bundle-test-'));
});
afterAll(async () => {
  await cleanup?.();
  await rm(tmp, { recursive: true, force: true });
});

async function variantOf(name: string, edit: (dir: string) => Promise<void>): Promise<string> {
  const dir = join(tmp, name);
  await cp(good, dir, { recursive: true });
  await edit(dir);
  return dir;
}

async function editManifest(dir: string, f: (m: Record<string, Record<string, unknown>>) => void): Promise<void> {
  const path = join(dir, 'fromage.json');
  const m = JSON.parse(await readFile(path, 'utf8')) as Record<string, Record<string, unknown>>;
  f(m);
  await writeFile(path, JSON.stringify(m));
}

const openError = (dir: string): Promise<unknown> => openBundle(dir, { threads: 1 }).then(async (b) => b.release(), (e: unknown) => e);

describe('openBundle', () => {
  it('opens a converted bundle', async () => {
    const b = await openBundle(good, { threads: 1 });
    expect(b.manifest.model.vocab_size).toBe(296);
    expect(b.device).toBe('cpu');
    await b.release();
  });

  it('explains a missing bundle', async () => {
    const err = await openError(join(tmp, 'absent'));
    expect(err).toBeInstanceOf(BundleError);
    expect((err as Error).message).toMatch(/no model bundle at .*fromage setup.*fromage convert/);
  });

  it('refuses another format version', async () => {
    const dir = await variantOf('v3', (d) => editManifest(d, (m) => ((m as unknown as { format_version: number }).format_version = 3)));
    expect(String(await openError(dir))).toMatch(/format version 3, this version of fromage-bot reads 2 .*rebuild it with `fromage convert` \(or rerun `fromage setup`\)/);
  });

  it('refuses a version-1 bundle (present.* KV-cache contract) and says how to rebuild it', async () => {
    const dir = await variantOf('v1', (d) => editManifest(d, (m) => ((m as unknown as { format_version: number }).format_version = 1)));
    const err = await openError(dir);
    expect(err).toBeInstanceOf(BundleError);
    expect(String(err)).toMatch(/format version 1, this version of fromage-bot reads 2 \(the decoder's KV-cache contract changed\): rebuild it with `fromage convert` \(or rerun `fromage setup`\)/);
  });

  it('refuses a bundle whose graphs and manifest disagree', async () => {
    const dir = await variantOf('dims', (d) => editManifest(d, (m) => (m.model.hidden_size = 32)));
    expect(String(await openError(dir))).toMatch(/decoder.onnx input inputs_embeds has shape \[batch, seq, 64\] but fromage.json says \[\?, \?, 32\]: the graphs and the manifest disagree/);
    const layers = await variantOf('layers', (d) => editManifest(d, (m) => (m.model.num_layers = 3)));
    expect(String(await openError(layers))).toMatch(/2 cache layers but fromage.json says 3/);
    const vocab = await variantOf('vocab', (d) => editManifest(d, (m) => (m.model.vocab_size = 300)));
    expect(String(await openError(vocab))).toMatch(/tokenizer.json has 296 tokens but fromage.json says vocab_size 300/);
  });

  it('names a missing graph file', async () => {
    const dir = await variantOf('nodecoder', (d) => rm(join(d, 'decoder.onnx')));
    expect(String(await openError(dir))).toMatch(/incomplete: decoder.onnx is missing/);
  });

  it('names a corrupt graph file', async () => {
    const dir = await variantOf('corrupt', (d) => writeFile(join(d, 'vision.onnx'), 'not a graph'));
    expect(String(await openError(dir))).toMatch(/cannot load .*vision.onnx/);
  });

  it('falls back to CPU with a warning when CUDA is asked for but unavailable', async () => {
    const warnings: string[] = [];
    const b = await openBundle(good, { device: 'cuda', threads: 1, warn: (m) => warnings.push(m) });
    try {
      // This machine's onnxruntime-node has no CUDA provider; on a GPU host this may be 'cuda'.
      if (b.device === 'cpu') {
        expect(warnings).toHaveLength(1);
        expect(warnings[0]).toMatch(/FROMAGE_DEVICE=cuda but .*running on CPU/);
        // The way out is named, whichever part is missing.
        expect(warnings[0]).toMatch(/README's GPU section: `ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node`/);
        if (missingCudaLibraries().length > 0) expect(warnings[0]).toMatch(/CUDA provider is not installed \(libonnxruntime_providers_shared\.so/);
      }
    } finally {
      await b.release();
    }
  });

  it('prints no native "Failed to load library" line, on the CPU path or when CUDA is missing', async () => {
    if (missingCudaLibraries().length === 0) return; // a GPU machine: the provider loads
    // The red line comes from native code on fd 2, so it is only visible from another process.
    const script = `
      const { openBundle } = await import(${JSON.stringify(new URL('../../src/model/bundle.ts', import.meta.url).href)});
      for (const device of ['cpu', 'cuda']) await (await openBundle(${JSON.stringify(good)}, { device, threads: 1, warn: () => {} })).release();
    `;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/Failed to load library|providers_shared/);
  });
});

describe('FromageRuntime', () => {
  it('caches visual embeddings by image hash', async () => {
    const rt = await FromageRuntime.open(good, { threads: 1 });
    try {
      const data = await readFile(join(FIXTURES, 'images/landscape.png'));
      const a = await rt.encodeImage(data, 'h1');
      expect(await rt.encodeImage(data, 'h1')).toBe(a);
      expect(await rt.encodeImage(data, 'h2')).not.toBe(a);
    } finally {
      await rt.close();
    }
  });

  it('samples reproducibly for a seed (temperature + top-p)', async () => {
    const rt = await FromageRuntime.open(good, { threads: 1 });
    try {
      const gen = async (seed: number): Promise<readonly number[]> =>
        (await rt.generate([{ type: 'text', text: 'Q: what is this?\nA:' }], { numWords: 12, temperature: 1.0, topP: 0.95, seed })).generatedIdsFull;
      const a = await gen(11);
      expect(await gen(11)).toEqual(a);
      const others = await Promise.all([12, 13, 14].map(gen));
      expect(others.some((o) => JSON.stringify(o) !== JSON.stringify(a))).toBe(true);
    } finally {
      await rt.close();
    }
  });

  it('gives a [RET] generated as the very last token its embedding (the reference raises)', async () => {
    const rt = await FromageRuntime.open(good, { threads: 1 });
    try {
      const prompt = [{ type: 'text' as const, text: 'Q: what is this?\nA:' }];
      const probe = await rt.generate(prompt, { numWords: 1 }, { recordLogits: true });
      // The factor multiplies the raw logit: pick its sign so [RET] wins the single step.
      const raw = probe.stepLogits[0][295];
      const r = await rt.generate(prompt, { numWords: 1, retScaleFactor: Math.sign(raw) * 1e6, maxNumRets: 1 });
      expect(r.generatedIdsFull).toEqual([295]);
      expect(r.rets).toHaveLength(1);
      expect(r.rets[0].embedding).toHaveLength(16);
      expect(Math.hypot(...r.rets[0].embedding)).toBeCloseTo(1, 4);
      expect(r.outputs.map((o) => o.kind)).toEqual(['text', 'images']);
    } finally {
      await rt.close();
    }
  });
});
