/**
 * A small client for the Hugging Face hub's HTTP protocol, as `huggingface_hub` speaks it:
 *
 * - `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`: the commit a revision
 *   points at and every file with its size, git blob id and, for LFS files, the sha256.
 * - `HEAD {endpoint}/{repo}/resolve/{commit}/{path}`: relative redirects (renamed repos) are
 *   followed; an absolute redirect is the CDN location of an LFS blob, described by
 *   `X-Linked-Size` / `X-Linked-Etag`; `X-Repo-Commit` names the commit served.
 * - `GET` of that location, with `Range` to resume.
 *
 * The token goes only to the hub's own origin: a CDN on another host never sees it (the Python
 * client drops `authorization` when it follows the CDN redirect; so do we).
 */
import { EnvHttpProxyAgent, request, type Dispatcher } from 'undici';
import { z } from 'zod';
import { HubError } from './errors.ts';

export interface HubClientOptions {
  /** Hub base URL (`HF_ENDPOINT`), e.g. https://huggingface.co or a mirror. */
  endpoint: string;
  token?: string;
  userAgent?: string;
  dispatcher?: Dispatcher;
}

export interface HubFile {
  path: string;
  size: number;
  /** Content sha256, for files stored in LFS. */
  sha256?: string;
  /** Git blob id (sha1 of `blob <size>\0<content>`), for files stored in git. */
  gitSha1?: string;
}

export interface RepoSnapshot {
  repo: string;
  /** The revision asked for (branch, tag or commit). */
  revision: string;
  /** The commit it resolved to: every later request uses this, so a run sees one snapshot. */
  commit: string;
  files: HubFile[];
}

export interface ResolvedFile {
  /** Where to GET the bytes: the resolve URL itself, or the CDN location it redirects to. */
  url: string;
  size?: number;
  /** Unquoted ETag of the content: sha256 for LFS files, git blob id otherwise. */
  etag?: string;
  commit?: string;
}

export interface OpenedBody {
  status: number;
  headers: Dispatcher.ResponseData['headers'];
  body: Dispatcher.ResponseData['body'];
}

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);

/** The part of the model info payload we use; unknown fields are ignored. */
const repoInfoSchema = z.object({
  sha: z.string().regex(/^[0-9a-f]{40}$/, 'expected a 40-hex commit id'),
  siblings: z.array(
    z.object({
      rfilename: z.string().min(1),
      size: z.number().int().nonnegative().optional(),
      blobId: z.string().regex(/^[0-9a-f]{40}$/).optional(),
      lfs: z.object({ sha256: sha256Hex, size: z.number().int().nonnegative() }).optional(),
    }),
  ),
});

const MAX_REDIRECTS = 10;

export function header(headers: Dispatcher.ResponseData['headers'], name: string): string | undefined {
  const v = headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

function unquoteEtag(etag: string | undefined): string | undefined {
  return etag?.replace(/^W\//, '').replace(/^"|"$/g, '');
}

function parseSize(v: string | undefined): number | undefined {
  if (v === undefined || !/^\d+$/.test(v)) return undefined;
  return Number(v);
}

/** Path segments are percent-encoded one by one so `/` in a file path stays a separator. */
function encodePath(path: string): string {
  return path.split('/').map(encodeURIComponent).join('/');
}

/** HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as the Python hub client (requests) honours them. */
function proxyFromEnv(): Dispatcher | undefined {
  const env = process.env;
  return env.HTTPS_PROXY || env.https_proxy || env.HTTP_PROXY || env.http_proxy ? new EnvHttpProxyAgent() : undefined;
}

export class HubClient {
  readonly endpoint: string;
  private readonly origin: string;

  private readonly dispatcher: Dispatcher | undefined;

  constructor(private readonly options: HubClientOptions) {
    this.endpoint = options.endpoint.replace(/\/+$/, '');
    this.origin = new URL(this.endpoint).origin;
    this.dispatcher = options.dispatcher ?? proxyFromEnv();
  }

  resolveUrl(repo: string, revision: string, path: string): string {
    return `${this.endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${encodePath(path)}`;
  }

  /** Headers for a request to `url`; the token only when `url` is on the hub's origin. */
  headersFor(url: string, extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { 'user-agent': this.options.userAgent ?? 'fromage-bot', ...extra };
    if (this.options.token && new URL(url).origin === this.origin) h.authorization = `Bearer ${this.options.token}`;
    return h;
  }

  async repoInfo(repo: string, revision: string): Promise<RepoSnapshot> {
    const url = `${this.endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`;
    const res = await this.send(url, 'GET', { accept: 'application/json' }, `listing ${repo}@${revision}`);
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw this.errorFor(res.statusCode, res.headers, `listing ${repo}@${revision}`, repo);
    }
    let json: unknown;
    try {
      json = await res.body.json();
    } catch (err) {
      throw new HubError(`${url}: the hub answered with something that is not JSON (${(err as Error).message}); is HF_ENDPOINT a Hugging Face hub?`);
    }
    const parsed = repoInfoSchema.safeParse(json);
    if (!parsed.success) {
      const where = parsed.error.issues[0];
      throw new HubError(`${url}: unexpected listing shape (${where?.path.join('.')}: ${where?.message}); is HF_ENDPOINT a Hugging Face hub?`);
    }
    const files = parsed.data.siblings.map((s): HubFile => {
      const size = s.lfs?.size ?? s.size;
      if (size === undefined) throw new HubError(`${url}: the listing gives no size for ${s.rfilename} (the hub must support ?blobs=true)`);
      return { path: s.rfilename, size, sha256: s.lfs?.sha256, gitSha1: s.lfs ? undefined : s.blobId };
    });
    return { repo, revision, commit: parsed.data.sha, files };
  }

  /** HEAD the resolve URL: where the bytes are and what the hub says about them. */
  async resolve(repo: string, revision: string, path: string): Promise<ResolvedFile> {
    let url = this.resolveUrl(repo, revision, path);
    const what = `${repo}/${path}`;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const res = await this.send(url, 'HEAD', { 'accept-encoding': 'identity' }, what);
      await res.body.dump();
      const h = res.headers;
      const meta = {
        size: parseSize(header(h, 'x-linked-size')) ?? parseSize(header(h, 'content-length')),
        etag: unquoteEtag(header(h, 'x-linked-etag') ?? header(h, 'etag')),
        commit: header(h, 'x-repo-commit'),
      };
      if (res.statusCode >= 300 && res.statusCode < 400) {
        const location = header(h, 'location');
        if (!location) throw new HubError(`${what}: redirect ${res.statusCode} without a Location header from ${url}`, res.statusCode);
        const next = new URL(location, url).toString();
        // A relative Location is the hub moving a repo: follow it and ask again. An absolute one
        // is the CDN: the metadata is on this response; the body is fetched from there.
        if (/^[a-z][a-z0-9+.-]*:/i.test(location) || location.startsWith('//')) {
          // Content-Length of a redirect is its own body, not the file's: trust X-Linked-Size only.
          return { url: next, ...meta, size: parseSize(header(h, 'x-linked-size')) };
        }
        url = next;
        continue;
      }
      if (res.statusCode >= 200 && res.statusCode < 300) return { url, ...meta };
      throw this.errorFor(res.statusCode, h, what, repo);
    }
    throw new HubError(`${what}: more than ${MAX_REDIRECTS} redirects from the hub`);
  }

  /**
   * GET the bytes from `offset` on (a Range request when offset > 0). A CDN or mirror that
   * redirects once more is followed; the token is re-decided per hop by origin.
   */
  async open(url: string, offset: number, what: string, repo: string): Promise<OpenedBody> {
    const extra: Record<string, string> = { 'accept-encoding': 'identity' };
    if (offset > 0) extra.range = `bytes=${offset}-`;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const res = await this.send(url, 'GET', extra, what);
      if (res.statusCode === 200 || res.statusCode === 206 || res.statusCode === 416) {
        return { status: res.statusCode, headers: res.headers, body: res.body };
      }
      await res.body.dump();
      const location = header(res.headers, 'location');
      if (res.statusCode >= 300 && res.statusCode < 400 && location) {
        url = new URL(location, url).toString();
        continue;
      }
      throw this.errorFor(res.statusCode, res.headers, what, repo);
    }
    throw new HubError(`${what}: more than ${MAX_REDIRECTS} redirects while downloading`);
  }

  private async send(url: string, method: 'GET' | 'HEAD', extra: Record<string, string>, what: string): Promise<Dispatcher.ResponseData> {
    try {
      return await request(url, {
        method,
        headers: this.headersFor(url, extra),
        dispatcher: this.dispatcher,
        headersTimeout: 60_000,
        bodyTimeout: 120_000,
      });
    } catch (err) {
      const e = err as Error & { code?: string };
      throw new HubError(`${what}: cannot reach ${new URL(url).origin} (${e.code ?? e.message}); check your network and HF_ENDPOINT`);
    }
  }

  private errorFor(status: number, headers: Dispatcher.ResponseData['headers'], what: string, repo: string): HubError {
    const code = header(headers, 'x-error-code');
    const hubMessage = header(headers, 'x-error-message');
    const suffix = hubMessage ? ` (hub: ${hubMessage})` : '';
    // The hub answers 401 RepoNotFound for missing and private repos alike.
    if (code === 'RepoNotFound')
      return new HubError(`${what}: repository ${repo} not found on ${this.endpoint}${suffix}${this.options.token ? '' : ' (if it is private or gated, set HF_TOKEN)'}.`, status);
    if (status === 401 && !this.options.token)
      return new HubError(`${what}: the hub asks for authentication${suffix}. Set HF_TOKEN to a token from ${this.endpoint}/settings/tokens.`, status);
    if (status === 401) return new HubError(`${what}: the hub rejected HF_TOKEN${suffix}. Create a new read token at ${this.endpoint}/settings/tokens.`, status);
    if (status === 403 || code === 'GatedRepo')
      return new HubError(`${what}: access to ${repo} is restricted${suffix}. Accept its terms at ${this.endpoint}/${repo} with the account of HF_TOKEN.`, status);
    if (code === 'RevisionNotFound') return new HubError(`${what}: revision not found in ${repo}${suffix}. Delete the setup lock file to re-pin to main.`, status);
    if (code === 'EntryNotFound' || status === 404) return new HubError(`${what}: not found on ${this.endpoint}${suffix}.`, status);
    if (status === 429) return new HubError(`${what}: rate limited by the hub; wait a minute and rerun (setting HF_TOKEN raises the limit).`, status);
    return new HubError(`${what}: the hub answered HTTP ${status}${suffix}.`, status);
  }
}
