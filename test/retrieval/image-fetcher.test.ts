import fs from 'node:fs';
import net from 'node:net';
import { pathToFileURL } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import sharp from 'sharp';
import { refusalReason, type Resolver } from '../../src/retrieval/fetch/address-policy.ts';
import { ImageFetcher, type ImageFetcherOptions } from '../../src/retrieval/fetch/image-fetcher.ts';
import { tmpDir } from './helpers.ts';
import { startImageServer, type ImageServer } from './image-server.ts';

/** Tests never use real DNS: names other than these fail to resolve. */
const testResolver: Resolver = async (host) => {
  if (host === 'localhost') return [{ address: '127.0.0.1', family: 4 }];
  if (host === 'rebind.test') return [{ address: '127.0.0.1', family: 4 }, { address: '10.1.2.3', family: 4 }];
  if (host === 'metadata.test') return [{ address: '169.254.169.254', family: 4 }];
  throw new Error(`ENOTFOUND ${host}`);
};

let server: ImageServer;
let cacheDir: string;
/** Every outgoing connection attempt; anything not to 127.0.0.1 is blocked and recorded. */
const attempts: string[] = [];

beforeAll(async () => {
  server = await startImageServer();
});
afterAll(async () => {
  await server.close();
});

beforeEach(() => {
  cacheDir = tmpDir('imgcache');
  attempts.length = 0;
  const original = net.Socket.prototype.connect;
  vi.spyOn(net.Socket.prototype, 'connect').mockImplementation(function (this: net.Socket, ...args: unknown[]) {
    const opts = (Array.isArray(args[0]) ? args[0][0] : args[0]) as { host?: string; port?: number } | number;
    const host = typeof opts === 'object' ? (opts.host ?? 'localhost') : String(args[1] ?? 'localhost');
    attempts.push(host);
    // 'localhost' is only ever reached through the fetcher's pinned, checked lookup
    if (host !== '127.0.0.1' && host !== 'localhost') throw new Error(`test guard: blocked a connection to ${host}`);
    return (original as (...a: unknown[]) => net.Socket).apply(this, args);
  });
});
afterEach(() => {
  vi.restoreAllMocks();
  fs.rmSync(cacheDir, { recursive: true, force: true });
});

function fetcher(extra: ImageFetcherOptions = {}): ImageFetcher {
  return new ImageFetcher({ cacheDir, allow: ['127.0.0.1'], resolver: testResolver, totalTimeoutMs: 3000, ...extra });
}

describe('ImageFetcher content', () => {
  it('fetches PNG, JPEG and WebP and re-encodes them for chat', async () => {
    const f = fetcher();
    const png = await f.fetchDetailed(`${server.base}/images/alpha.png`);
    expect(png.ok && png.image.contentType).toBe('image/png'); // transparency kept
    const jpg = await f.fetch(`${server.base}/images/portrait.jpg`);
    expect(jpg).toMatchObject({ contentType: 'image/jpeg', width: 72, height: 112, fromCache: false });
    const webp = await f.fetch(`${server.base}/photo.webp`);
    expect(webp).toMatchObject({ contentType: 'image/jpeg', width: 120, height: 80 });
    const meta = await sharp(webp?.data).metadata();
    expect(meta.format).toBe('jpeg');
    const big = await f.fetch(`${server.base}/big.jpg`);
    expect(big).toMatchObject({ width: 1024, height: 512 });
  });

  it('reports 404, an HTML page named .png, and SVG as unusable', async () => {
    const f = fetcher();
    expect(await f.fetchDetailed(`${server.base}/img/nope.png`)).toMatchObject({ ok: false, reason: 'http-status' });
    expect(await f.fetchDetailed(`${server.base}/img/gone_00001.png`)).toMatchObject({ ok: false, reason: 'not-an-image' });
    expect(await f.fetchDetailed(`${server.base}/svg`)).toMatchObject({ ok: false, reason: 'not-an-image' });
    expect(await f.fetch(`${server.base}/img/gone_00057.png`)).toBeNull();
  });

  it('refuses a decompression bomb by its pixel count', async () => {
    const r = await fetcher().fetchDetailed(`${server.base}/bomb.png`);
    expect(r).toMatchObject({ ok: false, reason: 'too-large' });
    expect(!r.ok && r.detail).toMatch(/pixel limit/);
  });

  it('enforces the byte limit for declared and chunked bodies', async () => {
    const f = fetcher({ maxBytes: 10_000 });
    expect(await f.fetchDetailed(`${server.base}/huge-declared`)).toMatchObject({ ok: false, reason: 'too-large' });
    expect(await f.fetchDetailed(`${server.base}/huge-chunked`)).toMatchObject({ ok: false, reason: 'too-large' });
  });

  it('times out slow headers and slow bodies', async () => {
    const f = fetcher({ totalTimeoutMs: 300 });
    const t0 = Date.now();
    expect(await f.fetchDetailed(`${server.base}/slow?ms=2000`)).toMatchObject({ ok: false, reason: 'timeout' });
    expect(await f.fetchDetailed(`${server.base}/slow-body`)).toMatchObject({ ok: false, reason: 'timeout' });
    expect(Date.now() - t0).toBeLessThan(1500);
  });

  it('times out a connection that never completes its handshake', async () => {
    // A TCP listener that accepts and stays silent: the TLS handshake of an https URL stalls.
    const sockets: net.Socket[] = [];
    const silent = net.createServer((s) => void sockets.push(s));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as net.AddressInfo).port;
    const t0 = Date.now();
    expect(await fetcher({ connectTimeoutMs: 200, totalTimeoutMs: 5000 }).fetchDetailed(`https://127.0.0.1:${port}/x.png`)).toMatchObject({ ok: false, reason: 'connect-timeout' });
    expect(Date.now() - t0).toBeLessThan(2000);
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => silent.close(() => resolve()));
  });

  it('rejects non-http schemes and credentials in URLs', async () => {
    const f = fetcher();
    expect(await f.fetchDetailed('file:///etc/passwd')).toMatchObject({ ok: false, reason: 'bad-url' });
    expect(await f.fetchDetailed(`http://u:p@127.0.0.1:${server.port}/img/00000.png`)).toMatchObject({ ok: false, reason: 'bad-url' });
    expect(await f.fetchDetailed('not a url')).toMatchObject({ ok: false, reason: 'bad-url' });
  });
});

describe('ImageFetcher redirects and the SSRF guard', () => {
  it('follows a redirect chain within the limit and stops beyond it', async () => {
    expect(await fetcher().fetch(`${server.base}/redirect/3`)).toMatchObject({ width: 55, height: 62 });
    expect(await fetcher({ maxRedirects: 2 }).fetchDetailed(`${server.base}/redirect/3?again`)).toMatchObject({ ok: false, reason: 'too-many-redirects' });
  });

  it('refuses a redirect to a metadata or private address before connecting', async () => {
    for (const target of ['http://169.254.169.254/latest/meta-data/', 'http://10.0.0.1/x.png', 'http://[::1]:80/x.png', 'http://metadata.test/x.png']) {
      attempts.length = 0;
      const r = await fetcher().fetchDetailed(`${server.base}/to?u=${encodeURIComponent(target)}`);
      expect(r).toMatchObject({ ok: false, reason: 'refused-address' });
      // exactly one connection: the allowed first hop; none to the refused address
      expect(attempts).toEqual(['127.0.0.1']);
    }
  });

  it('refuses loopback without an allowlist, and any host resolving to a private address', async () => {
    const before = server.connections();
    const f = new ImageFetcher({ cacheDir, resolver: testResolver });
    const r = await f.fetchDetailed(`${server.base}/img/00000.png`);
    expect(r).toMatchObject({ ok: false, reason: 'refused-address' });
    expect(!r.ok && r.detail).toMatch(/loopback.*FROMAGE_FETCH_ALLOW/);
    expect(await f.fetchDetailed(`http://localhost:${server.port}/img/00000.png`)).toMatchObject({ ok: false, reason: 'refused-address' });
    expect(await fetcher().fetchDetailed(`http://rebind.test:${server.port}/img/00000.png`)).toMatchObject({ ok: false, reason: 'refused-address' });
    expect(server.connections()).toBe(before);
    expect(attempts).toEqual([]);
    // an allowlisted host name is reachable
    expect(await new ImageFetcher({ cacheDir, resolver: testResolver, allow: ['localhost'] }).fetch(`http://localhost:${server.port}/img/00003.png`)).not.toBeNull();
  });

  it('reports refusals once per host, also when the negative cache answers, and files outside the galleries', async () => {
    const told: Array<[string, string]> = [];
    const onRefused = (host: string, detail: string) => told.push([host, detail]);
    const f = new ImageFetcher({ cacheDir, resolver: testResolver, onRefused });
    for (const n of ['00000', '00002', '00003']) expect(await f.fetch(`${server.base}/img/${n}.png`)).toBeNull();
    expect(await f.fetch(`http://127.0.0.1:PORT/img/00000.png`)).toBeNull();
    expect(await f.fetch(`http://127.0.0.1:PORT/img/00002.png`)).toBeNull();
    expect(await f.fetch(pathToFileURL('package.json').href)).toBeNull();
    expect(await f.fetch(pathToFileURL('tsconfig.json').href)).toBeNull();
    // a 404 is not a refusal: nothing to configure
    expect(await fetcher({ onRefused }).fetch(`${server.base}/missing.png`)).toBeNull();
    expect(told.map(([h]) => h)).toEqual([`127.0.0.1:${server.port}`, 'malformed URLs', 'local files']);
    expect(told[0][1]).toMatch(/loopback address; add it to FROMAGE_FETCH_ALLOW/);
    expect(told[2][1]).toMatch(/package\.json is a local file and no gallery folder may be read/);
    // a new fetcher (a restart) answered from the disk's negative cache still says why, once
    const again: string[] = [];
    const g = new ImageFetcher({ cacheDir, resolver: testResolver, onRefused: (h) => again.push(h) });
    expect(await g.fetchDetailed(`${server.base}/img/00000.png`)).toMatchObject({ ok: false, fromCache: true });
    expect(await g.fetch(`${server.base}/img/00002.png`)).toBeNull();
    expect(again).toEqual([`127.0.0.1:${server.port}`]);
  });

  it('classifies addresses', () => {
    expect(refusalReason('8.8.8.8')).toBeUndefined();
    expect(refusalReason('2606:4700::1111')).toBeUndefined();
    expect(refusalReason('169.254.169.254')).toMatch(/metadata/);
    expect(refusalReason('::ffff:127.0.0.1')).toMatch(/loopback/);
    expect(refusalReason('::ffff:7f00:1')).toMatch(/loopback/);
    expect(refusalReason('fd00:ec2::254')).toMatch(/unique-local/);
    expect(refusalReason('100.64.1.1')).toMatch(/NAT/);
    expect(refusalReason('224.0.0.1')).toMatch(/multicast/);
    expect(refusalReason('0.0.0.0')).toBeDefined();
  });
});

describe('ImageFetcher caching and concurrency', () => {
  it('serves repeats from the disk cache, across fetcher instances', async () => {
    const url = `${server.base}/img/00004.png`;
    const first = await fetcher().fetch(url);
    const hits = server.hits.get('/img/00004.png');
    const second = await fetcher().fetch(url);
    expect(second?.fromCache).toBe(true);
    expect(second?.data.equals(first?.data as Buffer)).toBe(true);
    expect(server.hits.get('/img/00004.png')).toBe(hits);
  });

  it('evicts the least recently used images beyond the size bound', async () => {
    let now = 1_700_000_000_000;
    const f = fetcher({ maxCacheBytes: 2_500, now: () => now });
    const urls = [5, 6, 7, 8, 10, 11].map((i) => `${server.base}/img/${String(i).padStart(5, '0')}.png`);
    const sizes: number[] = [];
    for (const u of urls.slice(0, 3)) {
      now += 1000;
      sizes.push((await f.fetch(u))?.data.length ?? 0);
    }
    now += 1000;
    expect((await f.fetch(urls[0]))?.fromCache).toBe(true); // urls[0] is now the most recent
    for (const u of urls.slice(3)) {
      now += 1000;
      await f.fetch(u);
    }
    const files = fs.readdirSync(cacheDir, { recursive: true }).filter((n) => String(n).endsWith('.img'));
    let total = 0;
    for (const n of files) total += fs.statSync(`${cacheDir}/${String(n)}`).size;
    expect(total).toBeLessThanOrEqual(2_500);
    const again = fetcher({ maxCacheBytes: 2_500, now: () => now });
    expect((await again.fetch(urls[5]))?.fromCache).toBe(true); // newest kept
    expect((await again.fetch(urls[1]))?.fromCache).toBe(false); // oldest evicted
    expect(sizes.every((n) => n > 0)).toBe(true);
  });

  it('remembers failures until the TTL passes', async () => {
    let now = 1_000_000;
    const url = `${server.base}/img/gone_00001.png`;
    const f = fetcher({ negativeTtlMs: 60_000, now: () => now });
    await f.fetch(url);
    const n = server.hits.get('/img/gone_00001.png');
    expect(await f.fetchDetailed(url)).toMatchObject({ ok: false, reason: 'not-an-image', fromCache: true });
    expect(await fetcher({ now: () => now }).fetchDetailed(url)).toMatchObject({ fromCache: true }); // on disk too
    expect(server.hits.get('/img/gone_00001.png')).toBe(n);
    now += 61_000;
    expect(await f.fetchDetailed(url)).toMatchObject({ fromCache: false });
    expect(server.hits.get('/img/gone_00001.png')).toBe((n ?? 0) + 1);
  });

  it('shares one download between concurrent callers; one giving up does not cancel it', async () => {
    const f = fetcher();
    const url = `${server.base}/slow?ms=200&shared`;
    const before = server.hits.get('/slow') ?? 0;
    const quitter = new AbortController();
    const a = f.fetchDetailed(url, { signal: quitter.signal });
    const b = f.fetchDetailed(url, { signal: new AbortController().signal });
    const c = f.fetch(url);
    quitter.abort();
    expect(await a).toMatchObject({ ok: false, reason: 'aborted' });
    expect(await b).toMatchObject({ ok: true });
    expect(await c).not.toBeNull();
    expect(server.hits.get('/slow')).toBe(before + 1);
    // when every caller gives up, the download is cancelled and not cached as a failure
    const only = new AbortController();
    const alone = `${server.base}/slow?ms=150&alone`;
    const d = f.fetchDetailed(alone, { signal: only.signal });
    only.abort();
    expect(await d).toMatchObject({ ok: false, reason: 'aborted' });
    expect(await f.fetchDetailed(alone)).toMatchObject({ ok: true, image: { fromCache: false } });
  });

  it('runs at most `concurrency` downloads at once', async () => {
    const f = fetcher({ concurrency: 2, cacheDir: undefined });
    const results = await Promise.all([1, 2, 3, 4, 5].map((i) => f.fetch(`${server.base}/slow?ms=100&i=${i}`)));
    expect(results.every((r) => r !== null)).toBe(true);
    expect(server.maxConcurrent()).toBeLessThanOrEqual(2);
  });
});

describe('ImageFetcher with an unwritable cache', () => {
  it('still returns images when the cache directory cannot be written', async () => {
    const f = new ImageFetcher({ cacheDir, allow: ['127.0.0.1'], resolver: testResolver });
    fs.rmSync(cacheDir, { recursive: true, force: true });
    fs.writeFileSync(cacheDir, 'now a file'); // every cache write fails with ENOTDIR
    expect(await f.fetch(`${server.base}/img/00009.png`)).toMatchObject({ width: expect.any(Number) });
    expect(await f.fetchDetailed(`${server.base}/img/gone_00001.png`)).toMatchObject({ ok: false, reason: 'not-an-image' });
    fs.rmSync(cacheDir, { force: true });
    fs.mkdirSync(cacheDir);
  });
});
