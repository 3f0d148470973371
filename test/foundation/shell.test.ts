import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createShellAdapter } from '../../adapters/shell/index.ts';
import { SqliteHistoryStore } from '../../src/conversation/history.ts';
import { Scheduler } from '../../src/queue/scheduler.ts';
import { createMessageHandler } from '../../src/service/handler.ts';
import { FakeEngine } from '../support/fake-engine.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** Drives the shell adapter through its stdin/stdout streams, with the real handler. */
async function session(lines: string[]): Promise<{ out: string; imageDir: string; engine: FakeEngine }> {
  const dir = mkdtempSync(join(tmpdir(), 'fromage-shell-'));
  dirs.push(dir);
  const input = new PassThrough();
  const output = new PassThrough();
  let out = '';
  output.on('data', (d: Buffer) => (out += d.toString()));
  const engine = new FakeEngine();
  const handler = createMessageHandler({
    engine,
    history: new SqliteHistoryStore(':memory:', { maxTurns: 20 }),
    scheduler: new Scheduler({ concurrency: 1, maxQueued: 10, userRatePerMinute: 600, userBurst: 100, jobTimeoutMs: 5000 }),
    logger: pino({ level: 'silent' }),
  });
  const exited = new Promise<void>((resolve) => {
    const adapter = createShellAdapter({ input, output, imageDir: join(dir, 'images'), onExit: resolve });
    void adapter.start(handler);
  });
  for (const line of lines) {
    input.write(`${line}\n`);
    // Let each line's answer arrive before the next, as a person typing would.
    await new Promise((r) => setTimeout(r, 30));
  }
  input.end();
  await exited;
  return { out, imageDir: join(dir, 'images'), engine };
}

describe('shell adapter, end to end through stdin/stdout', () => {
  it('chats, attaches an image, retrieves, saves images and resets', async () => {
    const { out, imageDir, engine } = await session([
      '/image test/fixtures/images/portrait.jpg',
      'what is in the picture?',
      '/retrieve a red circle',
      'show me more',
      '/reset',
      '/settings words=20 temperature=0.5',
      '/help',
    ]);
    expect(out).toContain('FROMAGe is ready');
    expect(out).toContain('(attached test/fixtures/images/portrait.jpg; it goes with your next message)');
    expect(out).toContain('fromage> I see 1 image(s). You said: what is in the picture?');
    expect(out).toMatch(/fromage> \[image\] .*0001-a_red_circle-0\.png score 1\.00/);
    expect(out).toContain('fromage> I forgot this conversation');
    expect(out).toContain('fromage> Settings here: ret_scale=1 max_images=2 words=20 temperature=0.5');
    expect(out).toContain('/retrieve <text>');
    expect(readdirSync(imageDir).length).toBe(3);
    expect(engine.calls[1].prompt.filter((p) => p.type === 'image')).toHaveLength(1);
  });

  it('attaches an image by URL, and explains a URL that fails', async () => {
    const png = readFileSync('test/fixtures/images/alpha.png');
    const server = createServer((req, res) => {
      if (req.url === '/alpha.png') res.writeHead(200, { 'content-type': 'image/png' }).end(png);
      else res.writeHead(404).end('gone');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    try {
      const { out, engine } = await session([`/image http://127.0.0.1:${port}/alpha.png`, 'what is it?', `/image http://127.0.0.1:${port}/missing.png`, 'and this?']);
      expect(out).toContain('fromage> I see 1 image(s). You said: what is it?');
      expect(engine.calls[0].prompt.filter((p) => p.type === 'image')).toHaveLength(1);
      expect(out).toMatch(/I could not use missing.png: downloading .* failed with HTTP 404/);
    } finally {
      server.close();
    }
  });

  it('answers bad input clearly and keeps running', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fromage-shell-bad-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'corrupt.png'), Buffer.from('\x89PNG\r\n\x1a\nthis is not really a png'));
    const { out } = await session([
      '',
      '/frobnicate now',
      '/image',
      `/image ${join(dir, 'missing.png')}`,
      'look',
      `/image ${join(dir, 'corrupt.png')}`,
      'and this?',
      '/settings words=100000',
      '/image http://[bad',
      'broken url?',
      `/image ${dir}`,
      'a folder?',
      'x'.repeat(20_000),
      'still alive?',
    ]);
    expect(out).toContain('fromage (error)> Send me some text, an image, or both');
    expect(out).toContain('fromage (error)> Unknown command /frobnicate. Type /help to see the commands.');
    expect(out).toContain('fromage (error)> Usage: /image <path or url>');
    expect(out).toMatch(/I could not use missing.png: there is no file at/);
    expect(out).toMatch(/I could not use corrupt.png: .*not an image|corrupt/);
    expect(out).toMatch(/Setting words: .*128/);
    expect(out).toMatch(/I could not use .*: could not download http:\/\/\[bad/);
    expect(out).toMatch(/is not a regular file/);
    expect(out).toMatch(/Your message was 20000 characters; I read the first 4000/);
    expect(out).toContain('fromage> I see 0 image(s). You said: still alive?');
  });
});
