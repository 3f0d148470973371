/**
 * Chromium from the system package (Debian `chromium`), driven by playwright-core: nothing is
 * downloaded. In CI a missing browser fails the tests; elsewhere they are skipped, saying why.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';

function findChromium(): string | undefined {
  const named = process.env.CHROMIUM_PATH;
  if (named) return named;
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    try {
      const path = execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim();
      if (path && existsSync(path)) return path;
    } catch {
      // not installed under this name
    }
  }
  return undefined;
}

export const CHROMIUM = findChromium();

/** True when the browser tests must not run: no Chromium on a developer machine (never in CI). */
export const SKIP_BROWSER = CHROMIUM === undefined && !process.env.CI;
if (SKIP_BROWSER)
  console.warn('test/web: browser tests skipped: no chromium found (apt-get install chromium, or set CHROMIUM_PATH). In CI they run and a missing browser fails them.');

export async function launchChromium(): Promise<Browser> {
  if (!CHROMIUM) throw new Error('No chromium binary found: .ci/run installs the Debian package `chromium`; set CHROMIUM_PATH if it lives elsewhere.');
  // --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
  return chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
}

/** Opens the chat and waits until its script has loaded the conversations. */
export async function openChat(page: Page, url: string): Promise<void> {
  await page.goto(url);
  await page.waitForSelector('body[data-ready="true"]');
}

/** The few DOM shapes page-side callbacks use (the project compiles without lib.dom). */
export interface PageImage {
  readonly complete: boolean;
  readonly naturalWidth: number;
  readonly naturalHeight: number;
  readonly alt: string;
  decode(): Promise<void>;
}

/** Every image matching `selector`, once decoded, with its natural size and alt text. */
export async function decodedSizes(page: Page, selector: string): Promise<{ alt: string; width: number; height: number }[]> {
  return page.locator(selector).evaluateAll(async (nodes) => {
    const imgs = nodes as unknown as PageImage[];
    await Promise.all(imgs.map((img) => img.decode().catch(() => {})));
    return imgs.map((img) => ({ alt: img.alt, width: img.naturalWidth, height: img.naturalHeight }));
  });
}
