/**
 * A local gallery through the bot, as a self-hoster sets it up: `fromage index build --images
 * DIR` (file:// rows), FROMAGE_INDEX naming it, the engine opened from the configuration the way
 * `fromage serve` opens it, the service and the terminal adapter. Retrieved gallery images must
 * be shown with no allow-list; a second index whose URLs the address guard refuses is skipped,
 * and the reason is logged once per host.
 */
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createShellAdapter } from '../../adapters/shell/index.ts';
import { loadConfig } from '../../src/config.ts';
import { SqliteHistoryStore } from '../../src/conversation/history.ts';
import { buildGallery } from '../../src/retrieval/build-gallery.ts';
import { importPickle } from '../../src/retrieval/import-pickle.ts';
import { openConfiguredEngine } from '../../src/service/open-engine.ts';
import { startService, type RunningService } from '../../src/service/service.ts';
import { convertFixtureBundle, serveFixtureImages } from '../model/helpers.ts';

const FIXTURES = 'test/fixtures';

let work: string;
let gallery: string;
let bundleCleanup: () => Promise<void>;
let images: Awaited<ReturnType<typeof serveFixtureImages>>;
let service: RunningService;
const logLines: string[] = [];
const input = new PassThrough();
const output = new PassThrough();
let transcript = '';
output.on('data', (d: Buffer) => (transcript += d.toString()));

async function type(line: string, until: RegExp): Promise<string> {
  const from = transcript.length;
  input.write(`${line}\n`);
  const deadline = Date.now() + 30_000;
  while (!until.test(transcript.slice(from))) {
    if (Date.now() > deadline) throw new Error(`no answer matching ${until} after "${line}":\n${transcript.slice(from)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return transcript.slice(from);
}

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
  const cc3m = join(work, 'cc3m-index');
  await importPickle(join(FIXTURES, 'fromage_model/cc3m_embeddings.pkl'), cc3m, { silent: true });
  await writeFile(join(cc3m, 'urls.txt'), (await readFile(join(cc3m, 'urls.txt'), 'utf8')).replaceAll('PORT', String(images.port)));

  const config = loadConfig({ FROMAGE_BUNDLE: conv.dir, FROMAGE_INDEX: `${galleryIndex},${cc3m}`, FROMAGE_DATA_DIR: join(work, 'data'), FROMAGE_THREADS: '1' });
  const sink = new Writable({ write: (chunk: Buffer, _e, cb) => (logLines.push(chunk.toString()), cb()) });
  const logger = pino({ level: 'warn' }, sink);
  const engine = await openConfiguredEngine(config, logger, { yes: false });
  service = await startService({
    config,
    logger,
    engine,
    adapters: [createShellAdapter({ input, output, imageDir: join(work, 'shell-images') })],
    history: new SqliteHistoryStore(join(work, 'data', 'history.sqlite'), { maxTurns: 50 }),
  });
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
