/**
 * A Hugging Face hub on 127.0.0.1 serving folders of test fixtures with the hub's URL layout
 * and headers: `/api/models/{repo}/revision/{rev}?blobs=true` listings, `/resolve/` URLs
 * that send small files through a relative redirect to `/api/resolve-cache/` (ETag = git blob
 * id) and redirect LFS files to a "CDN" on
 * another port (X-Linked-Etag / X-Linked-Size / X-Repo-Commit), Range requests on the CDN.
 * Faults on demand: a connection dropped mid-body, corrupted bytes, a required token.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, relative, sep } from 'node:path';

export interface FakeRepoSource {
  id: string;
  dir: string;
  /** Relative paths to leave out (to simulate an incomplete mirror). */
  exclude?: string[];
}

interface Blob {
  path: string;
  bytes: Buffer;
  lfs: boolean;
  sha256: string;
  gitSha1: string;
}

interface Repo {
  id: string;
  commit: string;
  files: Map<string, Blob>;
}

export interface RequestRecord {
  server: 'hub' | 'cdn';
  method: string;
  path: string;
  range?: string;
  authorization?: string;
}

const LFS_EXT = /\.(bin|safetensors|tar|pkl|onnx|data)$/;

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else out.push(p);
  }
  return out;
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

export class FakeHub {
  readonly requests: RequestRecord[] = [];
  /** `repo/path` keys whose first CDN (or direct) GET is cut off halfway through the body. */
  readonly dropOnce = new Set<string>();
  /** `repo/path` keys served with one byte flipped. */
  readonly corrupt = new Set<string>();
  /** The CDN ignores Range headers and always sends the whole file with 200 (some proxies do). */
  ignoreRange = false;
  /** The next this-many CDN requests fail with 503. */
  cdnFailures = 0;
  /** When set, every hub (not CDN) request must carry `Authorization: Bearer <token>`. */
  requireToken?: string;
  endpoint = '';
  cdnOrigin = '';
  private readonly repos = new Map<string, Repo>();
  private readonly bySha = new Map<string, { repo: Repo; blob: Blob }>();
  private readonly hub = createServer((req, res) => this.onHub(req, res));
  private readonly cdn = createServer((req, res) => this.onCdn(req, res));

  constructor(sources: FakeRepoSource[]) {
    for (const src of sources) {
      const repo: Repo = { id: src.id, commit: createHash('sha1').update(src.id).digest('hex'), files: new Map() };
      for (const abs of walk(src.dir)) {
        const path = relative(src.dir, abs).split(sep).join('/');
        if (src.exclude?.includes(path)) continue;
        const bytes = readFileSync(abs);
        const blob: Blob = {
          path,
          bytes,
          lfs: LFS_EXT.test(path),
          sha256: createHash('sha256').update(bytes).digest('hex'),
          gitSha1: createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex'),
        };
        repo.files.set(path, blob);
        if (blob.lfs) this.bySha.set(blob.sha256, { repo, blob });
      }
      this.repos.set(src.id, repo);
    }
  }

  async start(): Promise<void> {
    this.endpoint = `http://127.0.0.1:${await listen(this.hub)}`;
    this.cdnOrigin = `http://127.0.0.1:${await listen(this.cdn)}`;
  }

  async stop(): Promise<void> {
    this.hub.closeAllConnections();
    this.cdn.closeAllConnections();
    await Promise.all([new Promise((r) => this.hub.close(r)), new Promise((r) => this.cdn.close(r))]);
  }

  commitOf(repo: string): string {
    return this.repos.get(repo)!.commit;
  }

  /** Requests that moved file bytes (GETs of resolve URLs or CDN blobs). */
  downloads(): RequestRecord[] {
    return this.requests.filter((r) => r.method === 'GET' && (r.server === 'cdn' || r.path.includes('/resolve')));
  }

  private record(server: 'hub' | 'cdn', req: IncomingMessage): void {
    this.requests.push({
      server,
      method: req.method ?? '',
      path: req.url ?? '',
      range: req.headers.range,
      authorization: req.headers.authorization,
    });
  }

  private onHub(req: IncomingMessage, res: ServerResponse): void {
    this.record('hub', req);
    const url = new URL(req.url ?? '/', this.endpoint);
    if (this.requireToken && req.headers.authorization !== `Bearer ${this.requireToken}`) {
      res.writeHead(401, { 'x-error-code': 'GatedRepo', 'x-error-message': 'Access to this repository is restricted.' }).end();
      return;
    }
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (api) return this.listing(res, api[1], decodeURIComponent(api[2]), url.searchParams.get('blobs') === 'true');
    const cached = /^\/api\/resolve-cache\/models\/([^/]+\/[^/]+)\/([0-9a-f]{40})\/(.+)$/.exec(url.pathname);
    if (cached) return this.resolveCache(req, res, cached[1], cached[2], cached[3].split('/').map(decodeURIComponent).join('/'));
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (resolve) return this.resolve(req, res, resolve[1], decodeURIComponent(resolve[2]), resolve[3].split('/').map(decodeURIComponent).join('/'));
    res.writeHead(404).end();
  }

  private repoAt(res: ServerResponse, id: string, rev: string): Repo | undefined {
    const repo = this.repos.get(id);
    if (!repo) {
      res.writeHead(401, { 'x-error-code': 'RepoNotFound', 'x-error-message': 'Repository not found' }).end();
      return undefined;
    }
    if (rev !== 'main' && rev !== repo.commit) {
      res.writeHead(404, { 'x-error-code': 'RevisionNotFound', 'x-error-message': `Invalid rev id: ${rev}` }).end();
      return undefined;
    }
    return repo;
  }

  private listing(res: ServerResponse, id: string, rev: string, blobs: boolean): void {
    const repo = this.repoAt(res, id, rev);
    if (!repo) return;
    const siblings = [...repo.files.values()].map((b) =>
      blobs
        ? { rfilename: b.path, blobId: b.lfs ? createHash('sha1').update(b.sha256).digest('hex') : b.gitSha1, size: b.bytes.length, ...(b.lfs ? { lfs: { sha256: b.sha256, size: b.bytes.length, pointerSize: 134 } } : {}) }
        : { rfilename: b.path },
    );
    const body = JSON.stringify({ _id: repo.commit.slice(0, 24), id, modelId: id, sha: repo.commit, private: false, tags: [], siblings });
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) }).end(body);
  }

  private resolve(req: IncomingMessage, res: ServerResponse, id: string, rev: string, path: string): void {
    const repo = this.repoAt(res, id, rev);
    if (!repo) return;
    const blob = repo.files.get(path);
    if (!blob) {
      res.writeHead(404, { 'x-error-code': 'EntryNotFound', 'x-error-message': `${path} does not exist on "${rev}"` }).end();
      return;
    }
    if (blob.lfs) {
      const body = `Found. Redirecting to ${this.cdnOrigin}`;
      res.writeHead(302, {
        location: `${this.cdnOrigin}/repos/${blob.sha256.slice(0, 2)}/${blob.sha256.slice(2, 4)}/${blob.sha256}?X-Amz-Signature=fake`,
        'x-linked-etag': `"${blob.sha256}"`,
        'x-linked-size': String(blob.bytes.length),
        'x-repo-commit': repo.commit,
        etag: `"${createHash('sha1').update(blob.sha256).digest('hex')}"`,
        'content-length': Buffer.byteLength(body),
      });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    // Small files: the hub answers with a relative redirect to its resolve cache, which clients
    // follow (with the token: same host) and which serves the bytes.
    res.writeHead(307, { location: `/api/resolve-cache/models/${id}/${repo.commit}/${path.split('/').map(encodeURIComponent).join('/')}`, 'x-repo-commit': repo.commit });
    res.end();
  }

  private resolveCache(req: IncomingMessage, res: ServerResponse, id: string, commit: string, path: string): void {
    const repo = this.repoAt(res, id, commit);
    const blob = repo?.files.get(path);
    if (!repo || !blob || blob.lfs) {
      if (repo) res.writeHead(404, { 'x-error-code': 'EntryNotFound' }).end();
      return;
    }
    this.serveBytes(req, res, repo, blob, { etag: `"${blob.gitSha1}"`, 'x-repo-commit': repo.commit });
  }

  private onCdn(req: IncomingMessage, res: ServerResponse): void {
    this.record('cdn', req);
    if (this.cdnFailures > 0) {
      this.cdnFailures--;
      res.writeHead(503, { 'retry-after': '0' }).end('Service Unavailable');
      return;
    }
    const m = /^\/repos\/[0-9a-f]{2}\/[0-9a-f]{2}\/([0-9a-f]{64})$/.exec(new URL(req.url ?? '/', this.cdnOrigin).pathname);
    const hit = m && this.bySha.get(m[1]);
    if (!hit) {
      res.writeHead(403, { 'content-type': 'application/xml' }).end('<Error><Code>AccessDenied</Code></Error>');
      return;
    }
    this.serveBytes(req, res, hit.repo, hit.blob, { etag: `"${hit.blob.sha256}"` });
  }

  private serveBytes(req: IncomingMessage, res: ServerResponse, repo: Repo, blob: Blob, headers: Record<string, string>): void {
    const key = `${repo.id}/${blob.path}`;
    let bytes = blob.bytes;
    if (this.corrupt.has(key)) {
      bytes = Buffer.from(bytes);
      bytes[bytes.length >> 1] ^= 0xff;
    }
    const total = bytes.length;
    let start = 0;
    let status = 200;
    const range = this.ignoreRange ? null : /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (range) {
      start = Number(range[1]);
      if (start >= total) {
        res.writeHead(416, { 'content-range': `bytes */${total}` }).end();
        return;
      }
      status = 206;
      headers['content-range'] = `bytes ${start}-${total - 1}/${total}`;
    }
    const body = bytes.subarray(start);
    res.writeHead(status, { ...headers, 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream', 'content-length': body.length });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    if (this.dropOnce.delete(key)) {
      // Half the body, then a reset: the client sees a short read, as on a flaky network.
      res.write(body.subarray(0, body.length >> 1), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    res.end(body);
  }
}

export const FIXTURES = new URL('../fixtures/', import.meta.url).pathname;

/** The three upstream repositories, served from the tiny fixtures. */
export function fixtureRepos(): FakeRepoSource[] {
  return [
    { id: 'facebook/opt-6.7b', dir: join(FIXTURES, 'facebook/opt-6.7b') },
    { id: 'openai/clip-vit-large-patch14', dir: join(FIXTURES, 'openai/clip-vit-large-patch14') },
    { id: 'jykoh/fromage', dir: join(FIXTURES, 'fromage_model'), exclude: ['cc3m_embeddings.pkl', 'fromage_vis4/cc3m_embeddings.pkl'] },
  ];
}
