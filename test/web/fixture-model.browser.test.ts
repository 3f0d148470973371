/**
 * The web chat on the real engine and the tiny fixture model (converted by the real converter,
 * CC3M-format index imported): images the model retrieves mid-answer, and for /retrieve, appear
 * in the page decoded, in the reference's order, with their source. Saves the screenshot artifact.
 */
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openEngine } from '../../src/model/engine.ts';
import { fixtureBundleWithIndex, type FixtureImages } from '../model/helpers.ts';
import { decodedSizes, launchChromium, openChat, SKIP_BROWSER } from './browser.ts';
import { startWebChat, type WebChat } from './harness.ts';

const FIXTURES = 'test/fixtures';
const cases = JSON.parse(await readFile(join(FIXTURES, 'reference/fromage_cases.json'), 'utf8'));
export const SCREENSHOT = '.tmp/web-chat-fixture.png';

let work: string;
let images: FixtureImages;
let chat: WebChat;
let browser: Browser;
let page: Page;

async function send(text: string, bots: number): Promise<void> {
  await page.fill('#message', text);
  await page.press('#message', 'Enter');
  await page.waitForFunction(
    (n) => {
      const doc = (globalThis as unknown as { document: { querySelectorAll(s: string): { length: number } } }).document;
      return doc.querySelectorAll('#transcript .entry.bot:not(.pending)').length >= n && doc.querySelectorAll('#transcript .pending').length === 0;
    },
    bots,
    { timeout: 30_000 },
  );
}

/** The fixture image row each retrieved image of the last answer came from, in page order. */
async function rowsShown(): Promise<number[]> {
  const links = await page.locator('#transcript .entry.bot').last().locator('figcaption a').allTextContents();
  return links.map((l) => Number(/\/img\/(\d+)\.png$/.exec(l)?.[1]));
}

describe.skipIf(SKIP_BROWSER)('the web chat on the fixture model in Chromium', () => {
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'fromage-web-model-'));
    const fixture = await fixtureBundleWithIndex(work);
    const { bundle, index } = fixture;
    images = fixture.images;
    const dataDir = join(work, 'data');
    const engine = await openEngine({ bundleDir: bundle, indexDirs: [index], device: 'cpu', threads: 1, dataDir, fetchAllow: ['127.0.0.1'] });
    chat = await startWebChat({ engine, dataDir });
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1100, height: 820 } });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await chat?.close();
    await images?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('shows the images the model retrieves mid-answer, decoded, in the reference order (case iv)', async () => {
    const iv = cases.vis1.iv_ret_mid_answer;
    await openChat(page, chat.url);
    await send(`/settings ret_scale=${iv.kwargs.ret_scale_factor} words=${iv.kwargs.num_words} max_images=1`, 1);
    await page.setInputFiles('#file-input', join(FIXTURES, 'images/alpha.png'));
    await send('what is this?', 2);
    expect(await rowsShown()).toEqual([42, 9]);
    const shown = await decodedSizes(page, '#transcript .entry.bot.answer img');
    expect(shown).toHaveLength(2);
    for (const img of shown) {
      expect(img.width).toBeGreaterThan(0);
      expect(img.height).toBeGreaterThan(0);
      expect(img.alt.length).toBeGreaterThan(0);
    }
    await mkdir('.tmp', { recursive: true });
    await page.screenshot({ path: SCREENSHOT });
  });

  it('retrieves for a description, skipping the dead link like the reference (case iii)', async () => {
    await send('/settings max_images=2', 3);
    await page.fill('#message', 'a photo of a red circle');
    await page.click('#retrieve');
    await page.waitForFunction(() => (globalThis as unknown as { document: { querySelectorAll(s: string): { length: number } } }).document.querySelectorAll('#transcript .entry.bot:not(.pending)').length >= 4, undefined, { timeout: 30_000 });
    expect(await rowsShown()).toEqual(cases.vis1.iii_text_ret.rets[0].returned.slice(0, 2));
    const shown = await decodedSizes(page, '#transcript .entry.bot:last-child img');
    expect(shown.map((i) => i.width > 0 && i.alt === 'a photo of a red circle')).toEqual([true, true]);
  });
});
