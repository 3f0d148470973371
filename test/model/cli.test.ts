/**
 * `fromage generate` / `fromage retrieve` as a user runs them (child processes of bin/fromage.js),
 * against a bundle converted from the fixtures and an index served on loopback.
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CliResult } from '../../src/model/cli-output.ts';
import { buildGallery } from '../../src/retrieval/build-gallery.ts';
import { buildFixtureIndex, convertFixtureBundle, serveFixtureImages } from './helpers.ts';
import { FIXTURES, maxAbsDiff, refJson, refTensor } from './reference.ts';

const run = promisify(execFile);
const BIN = join(import.meta.dirname, '../../bin/fromage.js');

/** The environment without this machine's FROMAGE_* settings, so only what a test gives counts. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('FROMAGE_')) env[k] = v;
  return { ...env, FROMAGE_THREADS: '1', ...extra };
}

interface Outcome { code: number; stdout: string; stderr: string }
/** Runs bin/fromage.js in `cwd` (default: the temp dir, where no .env is unless a test writes one). */
async function fromage(args: string[], env: Record<string, string> = { FROMAGE_FETCH_ALLOW: '127.0.0.1' }, cwd?: string): Promise<Outcome> {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args], { env: cleanEnv(env), cwd: cwd ?? tmp, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** A folder holding only a .env with these lines, to run a command in. */
async function dotenvDir(name: string, lines: Record<string, string>): Promise<string> {
  const dir = join(tmp, name);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, '.env'), Object.entries(lines).map(([k, v]) => `${k}=${v}\n`).join(''));
  return dir;
}

const rowsOf = (o: Outcome): unknown[] => (JSON.parse(o.stdout) as CliResult).outputs.map((x) => ('text' in x ? x.text : x.images.map((i) => i.row)));

interface RetJson { emb: string; scores_after_downweight: string }
const cases = refJson<Record<string, Record<string, { prompts: object[]; kwargs: Record<string, number>; generated_ids: number[]; return_outputs: (string | number[])[]; rets: RetJson[] }>>>('fromage_cases.json');

let tmp: string;
let bundle: string;
let index: string;
let gallery: string;
let galleryIndex: string;
let port: number;
let cleanup: () => Promise<void>;
let closeServer: () => Promise<void>;

beforeAll(async () => {
  const conv = await convertFixtureBundle('vis1');
  bundle = conv.dir;
  cleanup = conv.cleanup;
  const srv = await serveFixtureImages();
  closeServer = srv.close;
  port = srv.port;
  tmp = await mkdtemp(join(tmpdir(), 'fromage-cli-'));
  index = join(tmp, 'index');
  await buildFixtureIndex('vis1', index, srv.port);
  // A local gallery as `fromage index build --images DIR` makes it: file:// URLs into DIR.
  gallery = join(tmp, 'gallery');
  await mkdir(gallery);
  for (const n of ['00000', '00002', '00003', '00009', '00020', '00025', '00042']) await copyFile(join(FIXTURES, 'img', `${n}.png`), join(gallery, `${n}.png`));
  galleryIndex = join(tmp, 'gallery-index');
  await buildGallery({ bundle, images: gallery, out: galleryIndex, silent: true, threads: 1 });
});
afterAll(async () => {
  await closeServer?.();
  await cleanup?.();
  await rm(tmp, { recursive: true, force: true });
});

/** Writes a CASE.json into the temp dir. */
async function caseFile(name: string, body: unknown): Promise<string> {
  const path = join(tmp, `case-${name}.json`);
  await writeFile(path, JSON.stringify(body));
  return path;
}

/** Image paths relative to the case file, as users write them. */
function withFixturePaths(prompts: object[]): object[] {
  return prompts.map((p) => ('image' in p ? { ...p, image: relative(tmp, join(FIXTURES, (p as { image: string }).image)) } : p));
}

describe('fromage generate --json', () => {
  it('reproduces iv_ret_mid_answer: outputs, ids, [RET] embeddings, scores', async () => {
    const c = cases.vis1.iv_ret_mid_answer;
    const file = await caseFile('iv', { prompt: withFixturePaths(c.prompts), ...c.kwargs });
    try {
      const out = await fromage(['generate', '--bundle', bundle, '--index', index, '--input', file, '--json']);
      expect(out.stderr).toBe('');
      expect(out.code).toBe(0);
      const r = JSON.parse(out.stdout) as CliResult;
      expect(r.generated_ids).toEqual(c.generated_ids);
      expect(r.outputs.map((o) => ('text' in o ? o.text : o.images.map((i) => i.row)))).toEqual(c.return_outputs);
      c.rets.forEach((ret, k) => {
        expect(maxAbsDiff(r.ret_embeddings[k], refTensor(ret.emb).data)).toBeLessThan(1e-4);
        const img = r.outputs.filter((o) => 'images' in o)[k];
        const scores = refTensor(ret.scores_after_downweight).data;
        for (const i of 'images' in img ? img.images : []) expect(Math.abs(i.score - scores[i.row])).toBeLessThan(1e-3);
      });
    } finally {
      await rm(file, { force: true });
    }
  });

  it('reproduces the reference [RET] offset bug only when asked (vi_image_ret_num_words0)', async () => {
    const c = cases.vis1.vi_image_ret_num_words0 as unknown as { prompts: object[]; kwargs: object; return_outputs: unknown[]; corrected: { return_outputs: unknown[] } };
    const base = { prompt: withFixturePaths(c.prompts), ...c.kwargs };
    const literal = await caseFile('vi-bug', { ...base, reference_ret_offset_bug: true });
    const fixed = await caseFile('vi', base);
    try {
      const rows = (o: Outcome): unknown[] => (JSON.parse(o.stdout) as CliResult).outputs.map((x) => ('text' in x ? x.text : x.images.map((i) => i.row)));
      expect(rows(await fromage(['generate', '--bundle', bundle, '--index', index, '--input', literal, '--json']))).toEqual(c.return_outputs);
      expect(rows(await fromage(['generate', '--bundle', bundle, '--index', index, '--input', fixed, '--json']))).toEqual(c.corrected.return_outputs);
    } finally {
      await rm(literal, { force: true });
      await rm(fixed, { force: true });
    }
  });

  it('names the invalid fields of CASE.json', async () => {
    const file = await caseFile('bad', { prompt: [{ text: 1 }, { image: 'x.png', extra: true }], num_words: -1, seed: 'a' });
    try {
      const out = await fromage(['generate', '--bundle', bundle, '--input', file, '--json']);
      expect(out.code).toBe(1);
      expect(out.stderr).toMatch(/prompt\[0\]/);
      expect(out.stderr).toMatch(/prompt\[1\]/);
      expect(out.stderr).toMatch(/num_words/);
      expect(out.stderr).toMatch(/seed/);
      expect(out.stderr).not.toMatch(/at .*\.ts:\d+/);
    } finally {
      await rm(file, { force: true });
    }
  });

  it('refuses top_p with greedy decoding and a prompt image that does not exist', async () => {
    const topP = await caseFile('topp', { prompt: [{ text: 'hi' }], top_p: 0.9 });
    const missing = await caseFile('missing', { prompt: [{ image: 'nope.png' }, { text: 'hi' }] });
    try {
      expect((await fromage(['generate', '--bundle', bundle, '--input', topP])).stderr).toMatch(/top_p: top_p must be 1 when temperature is 0/);
      const out = await fromage(['generate', '--bundle', bundle, '--input', missing]);
      expect(out.code).toBe(1);
      expect(out.stderr).toMatch(/cannot read prompt image .*nope\.png/);
    } finally {
      await rm(topP, { force: true });
      await rm(missing, { force: true });
    }
  });

  it('says the prompt is too long instead of failing inside onnxruntime', async () => {
    const file = await caseFile('long', { prompt: [{ text: 'word '.repeat(150) }], num_words: 4 });
    try {
      const out = await fromage(['generate', '--bundle', bundle, '--input', file]);
      expect(out.code).toBe(1);
      expect(out.stderr).toMatch(/^error: the prompt takes \d+ positions and 4 tokens were requested, but the model holds 128/);
    } finally {
      await rm(file, { force: true });
    }
  });

  it('names a prompt file that is not an image, before loading the model', async () => {
    await writeFile(join(tmp, 'notes.png'), 'not an image at all');
    const file = await caseFile('notimage', { prompt: [{ image: 'notes.png' }, { text: 'hi' }] });
    try {
      const out = await fromage(['generate', '--bundle', join(tmp, 'none'), '--input', file]);
      expect(out.code).toBe(1);
      expect(out.stderr).toBe(`error: prompt image ${join(tmp, 'notes.png')} in ${file}: the file is not an image\n`);
    } finally {
      await rm(file, { force: true });
    }
  });

  it('tells the user to build a bundle when there is none', async () => {
    const file = await caseFile('nobundle', { prompt: [{ text: 'hi' }] });
    try {
      const out = await fromage(['generate', '--bundle', join(tmp, 'none'), '--input', file]);
      expect(out.code).toBe(1);
      expect(out.stderr).toMatch(/no model bundle at .* run `fromage setup`/);
    } finally {
      await rm(file, { force: true });
    }
  });
});

describe('fromage retrieve --json', () => {
  it('returns the loadable top images (iii_text_ret), dead links skipped', async () => {
    const out = await fromage(['retrieve', '--bundle', bundle, '--index', index, '-k', '3', '--json', 'a photo of a red circle']);
    expect(out.code).toBe(0);
    const r = JSON.parse(out.stdout) as CliResult;
    expect(r.outputs.map((o) => ('text' in o ? o.text : o.images.map((i) => i.row)))).toEqual(cases.vis1.iii_text_ret.return_outputs);
    expect(maxAbsDiff(r.ret_embeddings[0], refTensor(cases.vis1.iii_text_ret.rets[0].emb).data)).toBeLessThan(1e-4);
  });

  it('with --no-fetch counts every candidate as loadable', async () => {
    const out = await fromage(['retrieve', '--bundle', bundle, '--index', index, '-k', '3', '--no-fetch', '--json', 'a photo of a red circle']);
    const r = JSON.parse(out.stdout) as CliResult;
    const imgs = r.outputs[1];
    expect('images' in imgs ? imgs.images.map((i) => i.row) : []).toEqual([25, 57, 20]);
  });

  it('needs an index', async () => {
    const out = await fromage(['retrieve', '--bundle', bundle, 'x']);
    expect(out.code).toBe(1);
    expect(out.stderr).toMatch(/^error: fromage retrieve needs an index: give --index DIR or set FROMAGE_INDEX in \.env/);
  });

  it('shows images of a local gallery (file:// rows), with no allow-list', async () => {
    const out = await fromage(['retrieve', '--bundle', bundle, '--index', galleryIndex, '-k', '2', '--json', 'a photo of a red circle'], {});
    expect(out.stderr).toBe('');
    const images = (JSON.parse(out.stdout) as CliResult).outputs.flatMap((o) => ('images' in o ? o.images : []));
    expect(images).toHaveLength(2);
    for (const i of images) expect(i.url).toMatch(new RegExp(`^file://${gallery}/\\d{5}\\.png$`));
  });

  it('says once per host why candidates were refused (address guard)', async () => {
    const out = await fromage(['retrieve', '--bundle', bundle, '--index', index, '-k', '3', 'a photo of a red circle'], {});
    expect(out.code).toBe(0);
    expect(out.stdout).toMatch(/\[no image found\]/);
    const warnings = out.stderr.split('\n').filter((l) => l.startsWith('warning: '));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(new RegExp(`^warning: retrieved images from 127\\.0\\.0\\.1:${port} are refused \\(refused to connect to 127\\.0\\.0\\.1: loopback address; add it to FROMAGE_FETCH_ALLOW`));
  });
});

describe('.env in the working folder', () => {
  it('fromage retrieve reads FROMAGE_BUNDLE, FROMAGE_INDEX and FROMAGE_FETCH_ALLOW from it', async () => {
    const cwd = await dotenvDir('env-retrieve', { FROMAGE_BUNDLE: bundle, FROMAGE_INDEX: index, FROMAGE_FETCH_ALLOW: '127.0.0.1' });
    const out = await fromage(['retrieve', '-k', '3', '--json', 'a photo of a red circle'], {}, cwd);
    expect(out.stderr).toBe('');
    expect(rowsOf(out)).toEqual(cases.vis1.iii_text_ret.return_outputs);
  });

  it('fromage generate reads them too', async () => {
    const c = cases.vis1.iv_ret_mid_answer;
    const cwd = await dotenvDir('env-generate', { FROMAGE_BUNDLE: bundle, FROMAGE_INDEX: index, FROMAGE_FETCH_ALLOW: '127.0.0.1' });
    const file = await caseFile('env-iv', { prompt: withFixturePaths(c.prompts), ...c.kwargs });
    const out = await fromage(['generate', '--input', file, '--json'], {}, cwd);
    expect(out.stderr).toBe('');
    expect(rowsOf(out)).toEqual(c.return_outputs);
  });

  it('fromage inspect without an argument inspects FROMAGE_BUNDLE', async () => {
    const cwd = await dotenvDir('env-inspect', { FROMAGE_BUNDLE: bundle });
    const out = await fromage(['inspect'], {}, cwd);
    expect(out.code).toBe(0);
    const id = (JSON.parse(await readFile(join(bundle, 'fromage.json'), 'utf8')) as { id: string }).id;
    expect(out.stdout).toContain(id);
  });

  it('fromage index build without --bundle embeds with FROMAGE_BUNDLE, and the gallery it writes is searched from .env', async () => {
    const cwd = await dotenvDir('env-build', { FROMAGE_BUNDLE: bundle, FROMAGE_INDEX: 'built' });
    const build = await fromage(['index', 'build', '--images', gallery, '--out', 'built'], {}, cwd);
    expect(build.stderr).not.toContain('error');
    expect(build.code).toBe(0);
    expect(build.stdout).toContain('7 rows');
    const found = await fromage(['retrieve', 'a picture'], {}, cwd);
    expect(found.code).toBe(0);
    expect(found.stdout).toContain('file://');
  });

  it("fromage index import records FROMAGE_BUNDLE's logit_scale, warns about unfetchable URLs, and keeps an existing --out", async () => {
    const cwd = await dotenvDir('env-import', { FROMAGE_BUNDLE: bundle });
    const out = join(tmp, 'imported');
    const pkl = join(FIXTURES, 'fromage_model/cc3m_embeddings.pkl');
    const first = await fromage(['index', 'import', pkl, '--out', out, '--no-quantize'], {}, cwd);
    expect(first.code).toBe(0);
    const scale = (JSON.parse(await readFile(join(bundle, 'fromage.json'), 'utf8')) as { model: { logit_scale: number } }).model.logit_scale;
    expect((JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as { logit_scale: number }).logit_scale).toBe(scale);
    // The fixture pickle holds the template http://127.0.0.1:PORT/...: never fetchable as is.
    expect(first.stderr).toMatch(/^warning: 64 of 64 URLs can never be fetched; retrieval will skip those rows:\n {2}row 0: http:\/\/127\.0\.0\.1:PORT\/img\/00000\.png \(not a valid URL\)/);
    const again = await fromage(['index', 'import', pkl, '--out', out, '--no-quantize'], {}, cwd);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^error: .*imported already exists and is not empty; pass --force to replace it/);
    expect((await fromage(['index', 'import', pkl, '--out', out, '--no-quantize', '--force'], {}, cwd)).code).toBe(0);
  });
});
