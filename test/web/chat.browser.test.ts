/**
 * The web chat in a real Chromium, around a deterministic engine double: uploads (picker, paste,
 * drop), streamed answers, queue positions, retrieved images, reload and restart, reset, undo,
 * two conversations side by side, hostile model output, a non-image upload, and the token gate.
 */
import { mkdir } from 'node:fs/promises';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Segment } from '../../src/conversation/types.ts';
import { decodedSizes, launchChromium, openChat, SKIP_BROWSER } from './browser.ts';
import { pngImage, replyImage, ScriptedEngine, startWebChat, type Script, type WebChat } from './harness.ts';

const TOKEN = 'browser-token-0123456789abcdef';
/** One job at a time, so a second message waits in the queue and shows its position. */
const ONE_AT_A_TIME = { FROMAGE_BATCH: '1', FROMAGE_ENGINE_SLOTS: '1' };
/** What hostile model output looks like: each would run script if it reached the page as HTML. */
const HOSTILE = [
  '<script>window.__xss = "script"</script>',
  '<img src=x onerror="window.__xss = \'img\'">',
  '[click me](javascript:window.__xss="md")',
  '<a href="javascript:window.__xss=\'a\'">link</a>',
  '**bold** <iframe src="javascript:window.__xss=\'iframe\'"></iframe>',
  '<svg onload="window.__xss=\'svg\'"></svg>',
].join(' ');

async function script(question: string, images: number): Promise<Script | undefined> {
  if (question === 'what is this?' && images > 0) {
    const segments: Segment[] = [
      { type: 'text', text: 'a red square on a table' },
      { type: 'images', images: [await replyImage('square.png', 'https://images.example/square.png', 12.34, 96)] },
    ];
    return { stream: ['a red', 'a red square', 'a red square on a table'], segments };
  }
  if (question === 'be hostile') {
    const segments: Segment[] = [
      { type: 'text', text: HOSTILE },
      {
        type: 'images',
        images: [
          { ...(await replyImage('"><img src=x onerror=window.__xss=7>.png', 'javascript:window.__xss="source"', 1)) },
          { ...(await replyImage('ok.png', 'https://ok.example/a?<script>x</script>', 2)) },
        ],
      },
    ];
    return { stream: [HOSTILE.slice(0, 40), HOSTILE], segments };
  }
  return undefined;
}

let engine: ScriptedEngine;
let chat: WebChat;
let browser: Browser;
let context: BrowserContext;

async function newPage(): Promise<Page> {
  const page = await context.newPage();
  // confirm() for Reset; any other dialog (alert from injected script) is a failure.
  page.on('dialog', (d) => void (d.type() === 'confirm' ? d.accept() : ((page as Page & { alerts?: string[] }).alerts ??= []).push(d.message()) && d.dismiss()));
  return page;
}

async function newConversation(page: Page): Promise<string> {
  const hashOf = () => page.evaluate(() => (globalThis as unknown as { location: { hash: string } }).location.hash);
  const before = await hashOf();
  await page.click('#new-conversation');
  await expect.poll(hashOf).not.toBe(before);
  const hash = await hashOf();
  const id = new URLSearchParams(hash.slice(1)).get('c')!;
  await page.waitForSelector(`#conversations button[aria-current="true"][data-id="${id}"]`);
  return id;
}

async function say(page: Page, text: string): Promise<void> {
  await page.fill('#message', text);
  await page.press('#message', 'Enter');
}

/** Waits until the conversation shows `n` bot entries and nothing pending. */
async function botEntries(page: Page, n: number) {
  await page.waitForFunction(
    (count) => {
      const doc = (globalThis as unknown as { document: { querySelectorAll(s: string): { length: number } } }).document;
      return doc.querySelectorAll('#transcript .entry.bot:not(.pending)').length >= count && doc.querySelectorAll('#transcript .pending').length === 0;
    },
    n,
    { timeout: 15_000 },
  );
  return page.locator('#transcript .entry.bot:not(.pending)');
}

describe.skipIf(SKIP_BROWSER)('the web chat in Chromium (engine double)', () => {
  beforeAll(async () => {
    engine = new ScriptedEngine(script, 150);
    chat = await startWebChat({ engine, env: ONE_AT_A_TIME });
    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  });
  afterAll(async () => {
    await browser?.close();
    await chat?.close();
  });

  it('sends an image chosen with the picker, streams the answer, shows the retrieved image decoded, full size on click', async () => {
    const page = await newPage();
    // Works offline: every request the page makes goes to the chat itself (no CDN, no fonts).
    const elsewhere: string[] = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(chat.url) && !r.url().startsWith('blob:')) elsewhere.push(r.url());
    });
    await openChat(page, chat.url);
    await newConversation(page);
    // Every text the pending reply shows while it is written.
    await page.evaluate(() => {
      const g = globalThis as unknown as { seen: string[]; MutationObserver: new (cb: () => void) => { observe(n: unknown, o: object): void }; document: { getElementById(id: string): unknown; querySelector(s: string): { textContent: string } | null } };
      g.seen = [];
      new g.MutationObserver(() => {
        const t = g.document.querySelector('#transcript .pending .text')?.textContent;
        if (t && g.seen[g.seen.length - 1] !== t) g.seen.push(t);
      }).observe(g.document.getElementById('transcript'), { subtree: true, childList: true, characterData: true });
    });
    await page.setInputFiles('#file-input', { name: 'photo.png', mimeType: 'image/png', buffer: await pngImage(120, 80) });
    await expect.poll(() => page.locator('#attachments li').textContent()).toContain('photo.png');
    await say(page, 'what is this?');
    const bots = await botEntries(page, 1);
    expect(await page.evaluate(() => (globalThis as unknown as { seen: string[] }).seen)).toEqual(expect.arrayContaining(['a red', 'a red square']));
    expect(await bots.first().locator('.text').textContent()).toBe('a red square on a table');
    const [retrieved] = await decodedSizes(page, '#transcript .entry.bot img');
    expect(retrieved).toEqual({ alt: 'a red square on a table', width: 96, height: 96 });
    const uploaded = await decodedSizes(page, '#transcript .entry.user img');
    expect(uploaded).toHaveLength(1);
    expect(uploaded[0].width).toBeGreaterThan(0);
    await expect.poll(() => page.locator('#attachments li').count()).toBe(0);
    const link = bots.first().locator('figcaption a');
    expect(await link.getAttribute('href')).toBe('https://images.example/square.png');
    expect(await link.getAttribute('rel')).toBe('noopener noreferrer');
    expect(await bots.first().locator('figcaption').textContent()).toContain('score 12.34');
    // Keyboard: the thumbnail is a button; Enter opens the full-size view, Escape closes it.
    await bots.first().locator('button.thumb').focus();
    await page.keyboard.press('Enter');
    await page.waitForSelector('#viewer[open]');
    expect((await decodedSizes(page, '#viewer-image'))[0].width).toBe(96);
    await page.keyboard.press('Escape');
    await page.waitForSelector('#viewer:not([open])', { state: 'attached' });
    // Every control has a name a screen reader can say; every image has alt text.
    const unnamed = await page.locator('button, a, textarea, input:not([type="file"])').evaluateAll((els) =>
      els
        .map((e) => e as unknown as { id: string; textContent: string; getAttribute(n: string): string | null; labels?: ArrayLike<unknown> })
        .filter((e) => !(e.textContent ?? '').trim() && !e.getAttribute('aria-label') && !(e.labels && e.labels.length > 0))
        .map((e) => e.id || 'anonymous'),
    );
    expect(unnamed).toEqual([]);
    expect(await page.locator('#transcript img:not([alt])').count()).toBe(0);
    expect(elsewhere).toEqual([]);
    await mkdir('.tmp', { recursive: true });
    await page.screenshot({ path: '.tmp/web-chat-double.png' });
    await page.close();
  });

  it('takes images by paste and by drag-and-drop', async () => {
    const page = await newPage();
    await openChat(page, chat.url);
    await newConversation(page);
    const png = (await pngImage(30, 20)).toString('base64');
    await page.evaluate((b64) => {
      const g = globalThis as unknown as Record<string, new (...a: unknown[]) => Record<string, unknown>> & { atob(s: string): string; document: { getElementById(id: string): { dispatchEvent(e: unknown): void } } };
      const bytes = Uint8Array.from(g.atob(b64), (c) => c.charCodeAt(0));
      const pasted = new g.DataTransfer();
      (pasted.items as unknown as { add(f: unknown): void }).add(new g.File([bytes], 'pasted.png', { type: 'image/png' }));
      g.document.getElementById('message').dispatchEvent(new g.ClipboardEvent('paste', { clipboardData: pasted, bubbles: true, cancelable: true }));
      const dropped = new g.DataTransfer();
      (dropped.items as unknown as { add(f: unknown): void }).add(new g.File([bytes], 'dropped.png', { type: 'image/png' }));
      g.document.getElementById('transcript').dispatchEvent(new g.DragEvent('drop', { dataTransfer: dropped, bubbles: true, cancelable: true }));
    }, png);
    await expect.poll(() => page.locator('#attachments li').allTextContents()).toEqual([expect.stringContaining('pasted.png'), expect.stringContaining('dropped.png')]);
    await say(page, 'two pictures');
    const bots = await botEntries(page, 1);
    expect(await bots.first().textContent()).toContain('You said: two pictures (2 image(s) so far)');
    expect((await decodedSizes(page, '#transcript .entry.user img')).map((i) => i.width)).toEqual([30, 30]);
    await page.close();
  });

  it('keeps two conversations apart side by side, showing the queue position while one waits', async () => {
    const left = await newPage();
    const right = await newPage();
    await openChat(left, chat.url);
    const leftId = await newConversation(left);
    await openChat(right, chat.url);
    const rightId = await newConversation(right);
    expect(rightId).not.toBe(leftId);
    const release = engine.hold();
    try {
      await say(left, 'left question');
      await left.waitForSelector('#transcript .pending');
      await say(right, 'right question');
      await expect.poll(() => right.locator('#transcript .pending .status').textContent(), { timeout: 10_000 }).toMatch(/^Waiting: position 1 in the queue(, about \d+ s)?\.$/); // the wait is estimated once an answer was timed
    } finally {
      release();
    }
    await botEntries(left, 1);
    await botEntries(right, 1);
    expect(await left.locator('#transcript').textContent()).toContain('You said: left question (0 image(s) so far)');
    expect(await left.locator('#transcript').textContent()).not.toContain('right question');
    expect(await right.locator('#transcript').textContent()).toContain('You said: right question (0 image(s) so far)');
    // Titles follow the first message; both pages list both conversations.
    await left.reload();
    await left.waitForSelector('body[data-ready="true"]');
    await expect.poll(() => left.locator('#conversations').textContent()).toContain('right question');
    expect(await left.locator('#title').textContent()).toBe('left question');
    // Deleting the right conversation takes it out of the list; the right page moves on.
    await right.click('#delete');
    await expect.poll(() => right.locator('#conversations').textContent()).not.toContain('right question');
    await expect.poll(() => right.locator('#transcript').textContent()).not.toContain('right question');
    await left.reload();
    await left.waitForSelector('body[data-ready="true"]');
    expect(await left.locator('#conversations').textContent()).not.toContain('right question');
    await left.close();
    await right.close();
  });

  it('shows the conversation again after a reload and after a restart; Undo, Reset, Help and Settings work from buttons', async () => {
    let page = await newPage();
    await openChat(page, chat.url);
    const id = await newConversation(page);
    await say(page, 'first');
    await botEntries(page, 1);
    await say(page, 'second');
    await botEntries(page, 2);
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]');
    await botEntries(page, 2);
    expect(await page.locator('#transcript .entry.user').allTextContents()).toEqual([expect.stringContaining('first'), expect.stringContaining('second')]);

    await page.click('#undo');
    await expect.poll(() => page.locator('#transcript .entry').count()).toBe(2);
    expect(chat.history.turns(`web:local:${id}:-`).map((t) => t.text)).toEqual(['first', 'You said: first (0 image(s) so far)']);

    // A restart: same data folder, new process state, new port.
    await page.close();
    const dataDir = chat.dataDir;
    await chat.close(true);
    chat = await startWebChat({ engine, dataDir, env: ONE_AT_A_TIME });
    page = await newPage();
    await openChat(page, `${chat.url}#c=${id}`);
    await botEntries(page, 1);
    expect(await page.locator('#transcript').textContent()).toContain('You said: first (0 image(s) so far)');

    await page.click('#help');
    await expect.poll(() => page.locator('#transcript .entry.notice').last().textContent()).toContain('/retrieve <text>');
    await page.click('#open-settings');
    await page.fill('#settings-form input[name="words"]', '20');
    await page.click('#settings-form button[value="apply"]');
    await expect.poll(() => page.locator('#transcript .entry.notice').last().textContent()).toContain('words=20');

    await page.click('#reset');
    await expect.poll(() => page.locator('#transcript .entry.bot').last().textContent()).toContain('I forgot this conversation');
    await expect.poll(() => page.locator('#transcript').textContent()).not.toContain('You said: first');
    expect(chat.history.turns(`web:local:${id}:-`)).toEqual([]);

    await page.fill('#message', 'cats on a sofa');
    await page.click('#retrieve');
    await expect.poll(() => page.locator('#transcript .entry.bot.answer img').count()).toBeGreaterThan(0);
    const retrieved = await decodedSizes(page, '#transcript .entry.bot.answer img');
    expect(retrieved[0]).toMatchObject({ alt: 'cats on a sofa', width: 64 });
    await page.close();
  });

  it('renders hostile model output, captions, URLs and file names as text: nothing runs', async () => {
    const page = await newPage();
    const violations: string[] = [];
    page.on('console', (m) => {
      if (/Content Security Policy/i.test(m.text())) violations.push(m.text());
    });
    await openChat(page, chat.url);
    await newConversation(page);
    await page.setInputFiles('#file-input', { name: '<img src=x onerror=alert(1)>.png', mimeType: 'image/png', buffer: await pngImage(10, 10) });
    await say(page, 'hi <script>window.__xss="user"</script>');
    await botEntries(page, 1);
    await say(page, 'be hostile');
    const bots = await botEntries(page, 2);
    const answer = bots.nth(1);
    expect(await answer.locator('.text').textContent()).toBe(HOSTILE);
    expect(await page.locator('#transcript .entry.user').first().textContent()).toContain('<script>window.__xss="user"</script>');
    expect(await page.locator('#transcript .entry.user').first().locator('figcaption').textContent()).toBe('<img src=x onerror=alert(1)>.png');
    expect(await page.locator('#transcript').locator('script, iframe, svg, object, embed').count()).toBe(0);
    const imgSources = await page.locator('#transcript img').evaluateAll((imgs) => imgs.map((i) => (i as unknown as { getAttribute(n: string): string }).getAttribute('src')));
    expect(imgSources.every((s) => s.startsWith('/api/images/'))).toBe(true);
    const handlers = await page.locator('#transcript *').evaluateAll((els) =>
      els.flatMap((e) => Array.from((e as unknown as { attributes: ArrayLike<{ name: string }> }).attributes, (a) => a.name)).filter((n) => n.startsWith('on')),
    );
    expect(handlers).toEqual([]);
    // The javascript: source is text, not a link; the only link is the https one.
    const hrefs = await page.locator('#transcript a').evaluateAll((as) => as.map((a) => (a as unknown as { getAttribute(n: string): string }).getAttribute('href')));
    expect(hrefs).toEqual(['https://ok.example/a?%3Cscript%3Ex%3C/script%3E']);
    expect(await answer.locator('figcaption').first().textContent()).toContain('javascript:window.__xss="source"');
    expect(await answer.locator('img').first().getAttribute('alt')).toBe(HOSTILE.slice(0, 200));
    await page.waitForTimeout(200);
    expect(await page.evaluate(() => (globalThis as unknown as { __xss?: unknown }).__xss)).toBeUndefined();
    expect((page as Page & { alerts?: string[] }).alerts ?? []).toEqual([]);
    expect(violations).toEqual([]);

    // The saved file is as inert as the page, and holds its images itself.
    const id = new URLSearchParams(new URL(page.url()).hash.slice(1)).get('c')!;
    const saved = await (await page.request.get(`${chat.url}api/conversations/${id}/export`)).text();
    const file = await newPage();
    await file.setContent(saved);
    const images = await decodedSizes(file, 'img');
    expect(images.length).toBe(3);
    expect(images.every((i) => i.width > 0)).toBe(true);
    expect(await file.locator('script, iframe, svg').count()).toBe(0);
    expect(await file.locator('a').evaluateAll((as) => as.map((a) => (a as unknown as { getAttribute(n: string): string }).getAttribute('href')))).toEqual(['https://ok.example/a?%3Cscript%3Ex%3C/script%3E']);
    await file.waitForTimeout(100);
    expect(await file.evaluate(() => (globalThis as unknown as { __xss?: unknown }).__xss)).toBeUndefined();
    expect((file as Page & { alerts?: string[] }).alerts ?? []).toEqual([]);
    await file.close();
    await page.close();
  });

  it('says clearly when an upload is not an image, and sends nothing', async () => {
    const page = await newPage();
    await openChat(page, chat.url);
    await newConversation(page);
    await page.setInputFiles('#file-input', { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('not a picture') });
    await say(page, 'what is this?');
    await page.waitForSelector('#alert:not([hidden])');
    expect(await page.locator('#alert').textContent()).toBe('notes.txt is not an image I can read; send a PNG, JPEG, GIF or WebP file.');
    expect(await page.locator('#transcript .entry').count()).toBe(0);
    // The text stays in the box, so removing the file and sending again is one click.
    expect(await page.inputValue('#message')).toBe('what is this?');
    await page.click('#attachments button[aria-label="Remove notes.txt"]');
    await page.press('#message', 'Enter');
    await botEntries(page, 1);
    await page.close();
  });
});

describe.skipIf(SKIP_BROWSER)('the token gate in Chromium', () => {
  let gated: WebChat;
  let gatedBrowser: Browser;
  beforeAll(async () => {
    gated = await startWebChat({ engine: new ScriptedEngine(() => undefined, 0), token: TOKEN });
    gatedBrowser = await launchChromium();
  });
  afterAll(async () => {
    await gatedBrowser?.close();
    await gated?.close();
  });

  it('asks for the token, refuses a wrong one, and lets the right one in', async () => {
    const page = await gatedBrowser.newPage();
    await page.goto(gated.url);
    expect(new URL(page.url()).pathname).toBe('/login');
    await page.fill('#token', 'not-the-token-at-all');
    await page.press('#token', 'Enter');
    await page.waitForSelector('#login-error:not([hidden])');
    expect(await page.locator('#login-error').textContent()).toContain('not the token set in FROMAGE_WEB_TOKEN');
    await page.fill('#token', TOKEN);
    await page.press('#token', 'Enter');
    await page.waitForSelector('body[data-ready="true"]');
    await say(page, 'hello');
    await botEntries(page, 1);
    expect(await page.locator('#transcript').textContent()).toContain('You said: hello');
    await page.close();
  });
});
