/**
 * `fromage generate` / `fromage retrieve` as a user runs them (child processes of bin/fromage.js),
 * against a bundle converted from the fixtures and an index served on loopback.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CliResult } from '../../src/model/cli-output.ts';
import { buildFixtureIndex, convertFixtureBundle, serveFixtureImages } from './helpers.ts';
import { FIXTURES, maxAbsDiff, refJson, refTensor } from './reference.ts';

const run = promisify(execFile);
const BIN = join(import.meta.dirname, '../../bin/fromage.js');

interface Outcome { code: number; stdout: string; stderr: string }
async function fromage(args: string[]): Promise<Outcome> {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args], { env: { ...process.env, FROMAGE_FETCH_ALLOW: '127.0.0.1', FROMAGE_THREADS: '1' }, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

interface RetJson { emb: string; scores_after_downweight: string }
const cases = refJson<Record<string, Record<string, { prompts: object[]; kwargs: Record<string, number>; generated_ids: number[]; return_outputs: (string | number[])[]; rets: RetJson[] }>>>('fromage_cases.json');

let tmp: string;
let bundle: string;
let index: string;
let cleanup: () => Promise<void>;
let closeServer: () => Promise<void>;

beforeAll(async () => {
  const conv = await convertFixtureBundle('vis1');
  bundle = conv.dir;
  cleanup = conv.cleanup;
  const srv = await serveFixtureImages();
  closeServer = srv.close;
  tmp = await mkdtemp(join(tmpdir(), 'fromage-cli-'));
  index = join(tmp, 'index');
  await buildFixtureIndex('vis1', index, srv.port);
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
    expect(out.stderr).toMatch(/needs --index/);
  });
});
