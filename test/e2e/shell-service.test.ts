/**
 * The whole product on the tiny fixtures, as a self-hoster runs it: the checkpoints converted by
 * the real converter, the CC3M-format pickle imported as an index, the real engine in its worker,
 * the service (history, scheduler, handler) and the shell adapter driven through stdin/stdout.
 * Answers must be the reference FROMAGe's.
 */
import { showControlCharacters } from '../../src/conversation/text.ts';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { openEngine } from '../../src/model/engine.ts';
import type { RunningService } from '../../src/service/service.ts';
import { fixtureBundleWithIndex, type FixtureImages } from '../model/helpers.ts';
import { shellTranscript, startShellService } from '../support/shell-session.ts';

const FIXTURES = 'test/fixtures';
const cases = JSON.parse(await readFile(join(FIXTURES, 'reference/fromage_cases.json'), 'utf8'));

let work: string;
let images: FixtureImages;
let service: RunningService;
/** The shell adapter's stdin/stdout; `type` writes a line and waits until the bot has printed `until`. */
const shell = shellTranscript();
const { type } = shell;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-e2e-'));
  const fixture = await fixtureBundleWithIndex(work);
  const { bundle, index } = fixture;
  images = fixture.images;
  const config = loadConfig({ FROMAGE_BUNDLE: bundle, FROMAGE_INDEX: index, FROMAGE_DATA_DIR: join(work, 'data'), FROMAGE_FETCH_ALLOW: '127.0.0.1' });
  const engine = await openEngine({
    bundleDir: bundle,
    indexDirs: [index],
    device: 'cpu',
    threads: 1,
    dataDir: config.FROMAGE_DATA_DIR,
    fetchAllow: config.FROMAGE_FETCH_ALLOW,
  });
  service = await startShellService(shell, work, { config, logger: pino({ level: 'silent' }), engine });
}, 120_000);

afterAll(async () => {
  await service?.stop();
  await images?.close();
  await rm(work, { recursive: true, force: true });
});

describe('fromage in a terminal, end to end on the fixture model', () => {
  it('answers an image question exactly as the reference (case i)', async () => {
    await type('/settings words=16 max_images=1', /Settings here/);
    await type(`/image ${FIXTURES}/images/landscape.png`, /attached/);
    const out = await type('what is this?', /fromage> .*\n/);
    const expected = cases.vis1.i_image_qa.return_outputs[0] as string;
    // The terminal shows the model's control bytes instead of sending them (issue 11).
    expect(out).toContain(`fromage> ${showControlCharacters(expected)}`);
  });

  it('shows the images the model retrieves mid-answer, in order (case iv)', async () => {
    const iv = cases.vis1.iv_ret_mid_answer;
    await type('/reset', /forgot/);
    await type(`/settings ret_scale=${iv.kwargs.ret_scale_factor} words=${iv.kwargs.num_words} max_images=1`, /Settings here/);
    await type(`/image ${FIXTURES}/images/alpha.png`, /attached/);
    const out = await type('what is this?', /\[image\][\s\S]*\[image\].*\n/);
    const savedFrom = [...out.matchAll(/\[image\] .* \(from (.*)\)/g)].map((m) => m[1]);
    expect(savedFrom.map((u) => u.replace(/^.*\/img\//, ''))).toEqual(['00042.png', '00009.png']);
    expect(out.indexOf('00042.png')).toBeLessThan(out.indexOf('00009.png'));
  });

  it('retrieves for a description, skipping the dead link like the reference (case iii)', async () => {
    await type('/settings max_images=2', /Settings here/);
    const out = await type('/retrieve a photo of a red circle', /\[image\][\s\S]*\[image\].*\n/);
    const rows = [...out.matchAll(/\[image\] .* \(from .*\/img\/(\d+)\.png\)/g)].map((m) => Number(m[1]));
    expect(rows).toEqual(cases.vis1.iii_text_ret.rets[0].returned.slice(0, 2));
    expect((await readdir(join(work, 'shell-images'))).length).toBeGreaterThanOrEqual(4);
  });
});
