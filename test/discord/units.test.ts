/** The adapter's pure parts: throttling, rendering, fitting uploads, access rules, downloads, errors. */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { DiscordAPIError } from 'discord.js';
import sharp from 'sharp';
import { isAllowed, type AccessRules } from '../../adapters/discord/access.ts';
import { parseApiBase } from '../../adapters/discord/api-base.ts';
import { ErrorReporter, classifyDiscordError } from '../../adapters/discord/errors.ts';
import { collectImages, downloadLimited } from '../../adapters/discord/images.ts';
import { renderReply, replyText } from '../../adapters/discord/render.ts';
import { queuedText } from '../../adapters/discord/responder.ts';
import { LatestValueThrottle } from '../../adapters/discord/throttle.ts';
import { fitToUploadLimit } from '../../adapters/discord/upload.ts';
import type { Logger } from '../../src/log.ts';
import { noisyPng, replyImage, solidPng } from './images.ts';

describe('LatestValueThrottle', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  test('runs the first value at once, then only the latest value once per interval', async () => {
    vi.useFakeTimers();
    const seen: number[] = [];
    const t = new LatestValueThrottle<number>(async (v) => void seen.push(v), 1000);
    t.push(1);
    await vi.advanceTimersByTimeAsync(0);
    t.push(2);
    t.push(3);
    await vi.advanceTimersByTimeAsync(500);
    expect(seen).toEqual([1]);
    await vi.advanceTimersByTimeAsync(500);
    expect(seen).toEqual([1, 3]);
    t.push(4);
    await t.cancel();
    await vi.advanceTimersByTimeAsync(5000);
    expect(seen).toEqual([1, 3]);
  });

  test('a failing call does not stop later ones', async () => {
    vi.useFakeTimers();
    const seen: number[] = [];
    const t = new LatestValueThrottle<number>(async (v) => {
      seen.push(v);
      if (v === 1) throw new Error('discord said no');
    }, 100);
    t.push(1);
    await vi.advanceTimersByTimeAsync(0);
    t.push(2);
    await vi.advanceTimersByTimeAsync(200);
    expect(seen).toEqual([1, 2]);
  });
});

describe('renderReply', () => {
  test('images before any text get their own message; more than 10 images spill over', async () => {
    const img = replyImage(await solidPng(1, 2, 3), 'x.png');
    const out = renderReply({
      kind: 'answer',
      segments: [
        { type: 'images', images: [img] },
        { type: 'text', text: 'caption' },
        { type: 'images', images: Array.from({ length: 12 }, () => img) },
        { type: 'text', text: '   ' },
      ],
    });
    expect(out.map((m) => [m.content, m.files.length])).toEqual([
      [undefined, 1],
      ['caption', 10],
      [undefined, 2],
    ]);
  });

  test('code fences stay closed across the 2000-character split', () => {
    const code = '```js\n' + Array.from({ length: 300 }, (_, i) => `const v${i} = ${i};`).join('\n') + '\n```';
    const out = renderReply({ kind: 'answer', segments: [{ type: 'text', text: code }] });
    expect(out.length).toBeGreaterThan(1);
    for (const m of out) {
      expect(m.content!.length).toBeLessThanOrEqual(2000);
      expect((m.content!.match(/```/g) ?? []).length % 2).toBe(0);
    }
  });
});

describe('fitToUploadLimit', () => {
  test('leaves images under the limit alone', async () => {
    const img = replyImage(await solidPng(9, 9, 9), 'small.png');
    expect(await fitToUploadLimit(img, 1 << 20)).toBe(img);
  });

  test('re-encodes and downscales to fit, keeping the aspect ratio', async () => {
    const big = await noisyPng(400);
    const fitted = await fitToUploadLimit(replyImage(big, 'big.png'), 20_000);
    expect(fitted).not.toBeNull();
    expect(fitted!.data.length).toBeLessThanOrEqual(20_000);
    expect(fitted!.contentType).toBe('image/jpeg');
    expect(fitted!.filename).toBe('big.jpg');
    const meta = await sharp(fitted!.data).metadata();
    expect(meta.width).toBe(meta.height);
  });

  test('gives up (null) when even a tiny image cannot fit, or the bytes are not an image', async () => {
    expect(await fitToUploadLimit(replyImage(await noisyPng(200), 'a.png'), 200)).toBeNull();
    expect(await fitToUploadLimit(replyImage(Buffer.alloc(5000, 7), 'b.png'), 1000)).toBeNull();
  });
});

describe('parseApiBase', () => {
  test('drops trailing slashes; a version in the URL becomes the version to speak', () => {
    expect(parseApiBase('https://discord.com/api')).toEqual({ api: 'https://discord.com/api' });
    expect(parseApiBase('https://discord.com/api/')).toEqual({ api: 'https://discord.com/api' });
    expect(parseApiBase('https://spacebar.example/api/v9/')).toEqual({ api: 'https://spacebar.example/api', version: '9' });
  });
});

describe('queuedText', () => {
  test('names the position and a rounded ETA', () => {
    expect(queuedText(1, 4.2)).toBe('⏳ You are next in the queue (about 4 s).');
    expect(queuedText(5, 0)).toBe('⏳ You are number 5 in the queue (about 1 s).');
    expect(queuedText(7, 150)).toBe('⏳ You are number 7 in the queue (about 3 min).');
    // No run measured yet: the place, no guessed time.
    expect(queuedText(2)).toBe('⏳ You are number 2 in the queue.');
  });
});

describe('isAllowed', () => {
  const rules = (r: Partial<AccessRules>): AccessRules => ({ guilds: new Set(), channels: new Set(), roles: new Set(), dms: true, ...r });
  const place = { guildId: 'g1', channelId: 'c1', parentId: null, roleIds: ['r1'] };

  test('empty lists allow everything', () => {
    expect(isAllowed(rules({}), place)).toBe(true);
    expect(isAllowed(rules({}), { ...place, guildId: null })).toBe(true);
  });

  test('each list narrows its own dimension', () => {
    expect(isAllowed(rules({ guilds: new Set(['g2']) }), place)).toBe(false);
    expect(isAllowed(rules({ guilds: new Set(['g1']) }), place)).toBe(true);
    expect(isAllowed(rules({ channels: new Set(['c9']) }), place)).toBe(false);
    expect(isAllowed(rules({ channels: new Set(['c9']) }), { ...place, channelId: 't1', parentId: 'c9' })).toBe(true);
    expect(isAllowed(rules({ roles: new Set(['r2']) }), place)).toBe(false);
    expect(isAllowed(rules({ dms: false }), { ...place, guildId: null })).toBe(false);
    // Guild lists do not apply to DMs; DISCORD_DMS does.
    expect(isAllowed(rules({ guilds: new Set(['g2']), roles: new Set(['r2']) }), { ...place, guildId: null, roleIds: [] })).toBe(true);
  });
});

describe('downloads', () => {
  let server: http.Server | null = null;
  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise((r) => server?.close(r) ?? r(undefined));
    server = null;
  });

  async function serve(handler: http.RequestListener): Promise<string> {
    server = http.createServer(handler);
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  test('a server that never answers times out with a clear reason', async () => {
    const base = await serve(() => undefined);
    await expect(downloadLimited(`${base}/slow.png`, 1000, 200)).rejects.toMatchObject({ reason: 'unreachable', message: expect.stringMatching(/longer than/) });
  });

  test('a chunked body without a length is cut at the byte limit', async () => {
    const base = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'image/png' });
      for (let i = 0; i < 20; i++) res.write(Buffer.alloc(1000));
      res.end();
    });
    await expect(downloadLimited(`${base}/big.png`, 5000, 2000)).rejects.toMatchObject({ reason: 'too-large' });
  });

  test('an expired CDN link becomes a note for the user, not an error', async () => {
    const base = await serve((_req, res) => {
      res.writeHead(404);
      res.end();
    });
    const { images, notes } = await collectImages([{ name: 'gone.png', url: `${base}/gone.png`, contentType: 'image/png', size: 10 }], {
      maxBytes: 1000,
      maxCount: 4,
      timeoutMs: 1000,
    });
    expect(images).toEqual([]);
    expect(notes).toEqual(['Skipped gone.png: the download failed (HTTP 404); the attachment may have been deleted.']);
  });
});

describe('ErrorReporter', () => {
  const apiError = (code: number) => new DiscordAPIError({ code, message: 'x' }, code, 403, 'POST', 'https://discord.test/x', { files: undefined, body: undefined });

  test('classifies the Discord codes the adapter expects', () => {
    expect(classifyDiscordError(apiError(10062))).toBe('expired-interaction');
    expect(classifyDiscordError(apiError(50013))).toBe('missing-permissions');
    expect(classifyDiscordError(apiError(10003))).toBe('unknown-channel');
    expect(classifyDiscordError(new Error('socket hang up'))).toBe('other');
  });

  test('logs a known failure once per place', () => {
    const calls: string[] = [];
    const logger = { warn: (_o: unknown, msg: string) => calls.push(msg), error: (_o: unknown, msg: string) => calls.push(msg) } as unknown as Logger;
    const reporter = new ErrorReporter(logger);
    reporter.report(apiError(50013), 'channel 1', 'send');
    reporter.report(apiError(50013), 'channel 1', 'send');
    reporter.report(apiError(50013), 'channel 2', 'send');
    expect(calls).toHaveLength(2);
    expect(calls[0]).toMatch(/Attach Files/);
  });
});

describe('renderReply and control characters (issue 11)', () => {
  test('shows them instead of passing them to Discord clients', () => {
    const out = renderReply({ kind: 'answer', segments: [{ type: 'text', text: 'hi \u001b[31mred\u0007' }] });
    expect(out).toEqual([{ content: 'hi ␛[31mred␇', files: [] }]);
    expect(replyText({ kind: 'error', segments: [{ type: 'text', text: 'bad \u0007' }] })).toBe('bad ␇');
  });
});
