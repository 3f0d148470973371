/** A loopback HTTP server with the misbehaviours the image fetcher must survive. */
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import zlib from 'node:zlib';
import sharp from 'sharp';
import { FIXTURES } from './helpers.ts';

export interface ImageServer {
  port: number;
  base: string;
  /** Requests per path. */
  hits: Map<string, number>;
  /** Sockets accepted. */
  connections: () => number;
  maxConcurrent: () => number;
  close(): Promise<void>;
}

function crc32(buf: Buffer): number {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

function pngChunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}

/** A 200-byte PNG whose header claims 30000 x 30000 pixels: a decompression bomb. */
export function bombPng(): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(30000, 0);
  ihdr.writeUInt32BE(30000, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', zlib.deflateSync(Buffer.alloc(30000 * 3 + 1))),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

export async function startImageServer(): Promise<ImageServer> {
  const hits = new Map<string, number>();
  let connections = 0;
  let active = 0;
  let maxConcurrent = 0;
  const big = await sharp({ create: { width: 2000, height: 1000, channels: 3, background: '#3366cc' } }).jpeg().toBuffer();
  const webp = await sharp(path.join(FIXTURES, 'images/landscape.png')).webp().toBuffer();
  const bomb = bombPng();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const p = url.pathname;
    hits.set(p, (hits.get(p) ?? 0) + 1);
    active++;
    maxConcurrent = Math.max(maxConcurrent, active);
    res.on('close', () => active--);
    const send = (type: string, body: Buffer) => {
      res.writeHead(200, { 'content-type': type, 'content-length': body.length });
      res.end(body);
    };
    if (p.startsWith('/img/')) {
      const file = path.join(FIXTURES, 'img', path.basename(p));
      if (!fs.existsSync(file)) return void res.writeHead(404).end('not found');
      // gone_*.png is an HTML 404 body served with 200 and an image name, like dead CDN links.
      return send(p.includes('gone_') ? 'text/html' : 'image/png', fs.readFileSync(file));
    }
    if (p.startsWith('/images/')) return send('application/octet-stream', fs.readFileSync(path.join(FIXTURES, 'images', path.basename(p))));
    if (p === '/big.jpg') return send('image/jpeg', big);
    if (p === '/photo.webp') return send('image/webp', webp);
    if (p === '/bomb.png') return send('image/png', bomb);
    if (p === '/svg') return send('image/svg+xml', Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'));
    if (p === '/slow') return void setTimeout(() => send('image/png', fs.readFileSync(path.join(FIXTURES, 'img/00000.png'))), Number(url.searchParams.get('ms') ?? 2000));
    if (p === '/slow-body') {
      res.writeHead(200, { 'content-type': 'image/png' });
      res.write(Buffer.alloc(10));
      return void setTimeout(() => res.end(), 3000);
    }
    if (p === '/huge-declared') return send('image/png', Buffer.alloc(64 * 1024));
    if (p === '/huge-chunked') {
      res.writeHead(200, { 'content-type': 'image/png' });
      for (let i = 0; i < 16; i++) res.write(Buffer.alloc(4096));
      return void res.end();
    }
    if (p.startsWith('/redirect/')) {
      const n = Number(p.split('/')[2]);
      const target = n <= 1 ? '/img/00002.png' : `/redirect/${n - 1}`;
      return void res.writeHead(302, { location: target }).end();
    }
    if (p === '/err500') return void res.writeHead(500).end('oops');
    if (p === '/gone410') return void res.writeHead(410).end('gone');
    if (p === '/to') return void res.writeHead(301, { location: url.searchParams.get('u') ?? '/' }).end();
    res.writeHead(404).end('no');
  });
  server.on('connection', () => connections++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    base: `http://127.0.0.1:${port}`,
    hits,
    connections: () => connections,
    maxConcurrent: () => maxConcurrent,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
