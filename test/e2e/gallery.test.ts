/**
 * A local gallery through the bot, as a self-hoster sets it up: `fromage index build --images
 * DIR` (file:// rows), FROMAGE_INDEX naming it, the engine opened from the configuration the way
 * `fromage serve` opens it, the service and the terminal adapter. Retrieved gallery images must
 * be shown with no allow-list; a second index whose URLs the address guard refuses is skipped,
 * and the reason is logged once per host.
 */
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { buildGallery } from '../../src/retrieval/build-gallery.ts';
import { openConfiguredEngine } from '../../src/service/open-engine.ts';
import type { RunningService } from '../../src/service/service.ts';
import { convertFixtureBundle, importFixtureIndex, serveFixtureImages } from '../model/helpers.ts';
import { shellTranscript, startShellService } from '../support/shell-session.ts';

const FIXTURES = 'test/fixtures';

let work: string;
let gallery: string;
let bundleCleanup: () => Promise<void>;
let images: Awaited<ReturnType<typeof serveFixtureImages>>;
let service: RunningService;
const logLines: string[] = [];
const shell = shellTranscript();
const { type } = shell;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-gallery-e2e-'));
  const conv = await convertFixtureBundle('vis1');
  bundleCleanup = conv.cleanup;
  gallery = join(work, 'photos');
  await mkdir(gallery);
  for (const n of ['00000', '00002', '00003', '00009', '00020', '00025', '00042']) await copyFile(join(FIXTURES, 'img', `${n}.png`), join(gallery, `${n}.png`));
  const galleryIndex = join(work, 'gallery-index');
  await buildGallery({ bundle: conv.dir, images: gallery, out: galleryIndex, silent: true, threads: 1 });
  // The CC3M-format fixture index, its URLs on a loopback server that FROMAGE_FETCH_ALLOW does not list.
  images = await serveFixtureImages();
  const cc3m = await importFixtureIndex(join(work, 'cc3m-index'), images.port);

  const config = loadConfig({ FROMAGE_BUNDLE: conv.dir, FROMAGE_INDEX: `${galleryIndex},${cc3m}`, FROMAGE_DATA_DIR: join(work, 'data'), FROMAGE_THREADS: '1' });
  const sink = new Writable({ write: (chunk: Buffer, _e, cb) => (logLines.push(chunk.toString()), cb()) });
  const logger = pino({ level: 'warn' }, sink);
  const engine = await openConfiguredEngine(config, logger, { yes: false });
  service = await startShellService(shell, work, { config, logger, engine });
}, 120_000);

afterAll(async () => {
  await service?.stop();
  await images?.close();
  await bundleCleanup?.();
  await rm(work, { recursive: true, force: true });
});

describe('a local gallery in the bot', () => {
  it('/retrieve shows gallery images read from disk, without FROMAGE_FETCH_ALLOW', async () => {
    await type('/settings max_images=2', /Settings here/);
    const out = await type('/retrieve a photo of a red circle', /\[image\][\s\S]*\[image\].*\n|found no image/);
    expect(out).not.toMatch(/found no image/);
    const from = [...out.matchAll(/\[image\] .* \(from (.*)\)/g)].map((m) => m[1]);
    expect(from).toHaveLength(2);
    for (const url of from) expect(url).toMatch(new RegExp(`^file://${gallery}/\\d{5}\\.png$`));
  });

  it('logs why the other index was refused, once for its host', async () => {
    await type('/retrieve a photo of a blue square', /\[image\][\s\S]*\[image\].*\n|found no image/);
    const refusals = logLines.filter((l) => l.includes('are refused'));
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toContain(`retrieved images from 127.0.0.1:${images.port} are refused`);
    expect(refusals[0]).toContain('FROMAGE_FETCH_ALLOW');
  });
});
