/**
 * One HTTP(S) GET that follows redirects under the SSRF guard. Every hop resolves its host
 * through AddressPolicy *before* a request is made, and the socket connects to exactly the
 * address that was checked (a custom `lookup`), so DNS cannot answer differently the second
 * time (rebinding). Timeouts: per-hop connect, and one total for all hops and the body.
 */
import http from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import { AddressPolicy, type ResolvedAddress, type Resolver } from './address-policy.ts';

export type FailureReason =
  | 'bad-url'
  | 'refused-address'
  | 'dns'
  | 'connect-timeout'
  | 'timeout'
  | 'network'
  | 'http-status'
  | 'too-many-redirects'
  | 'too-large'
  | 'not-an-image'
  | 'aborted';

export class FetchFailure extends Error {
  constructor(
    readonly reason: FailureReason,
    message: string,
    /** The HTTP status, for 'http-status' failures. */
    readonly status?: number,
  ) {
    super(message);
    this.name = 'FetchFailure';
  }
}

export interface GuardedGetOptions {
  policy: AddressPolicy;
  resolver: Resolver;
  connectTimeoutMs: number;
  totalTimeoutMs: number;
  maxBytes: number;
  maxRedirects: number;
  userAgent: string;
  signal?: AbortSignal;
}

export interface GuardedResponse {
  finalUrl: string;
  contentType: string | undefined;
  body: Buffer;
  redirects: number;
}

const REDIRECT = new Set([301, 302, 303, 307, 308]);

function pinnedLookup(addr: ResolvedAddress): LookupFunction {
  return (_hostname, options, callback) => {
    // Node asks for all addresses when it does happy-eyeballs (autoSelectFamily).
    if ((options as { all?: boolean }).all) (callback as (e: null, a: Array<{ address: string; family: number }>) => void)(null, [addr]);
    else callback(null, addr.address, addr.family);
  };
}

function parseHttpUrl(raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new FetchFailure('bad-url', `not a valid URL: ${raw.slice(0, 200)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new FetchFailure('bad-url', `only http and https URLs are fetched, not ${url.protocol}`);
  if (url.username || url.password) throw new FetchFailure('bad-url', 'URLs with credentials are not fetched');
  return url;
}

export async function guardedGet(rawUrl: string, o: GuardedGetOptions): Promise<GuardedResponse> {
  const total = new AbortController();
  const timer = setTimeout(() => total.abort(new FetchFailure('timeout', `no complete response within ${o.totalTimeoutMs} ms`)), o.totalTimeoutMs);
  const onOuterAbort = () => total.abort(new FetchFailure('aborted', 'cancelled'));
  if (o.signal?.aborted) onOuterAbort();
  o.signal?.addEventListener('abort', onOuterAbort, { once: true });
  try {
    let url = parseHttpUrl(rawUrl);
    for (let hop = 0; ; hop++) {
      let addresses: ResolvedAddress[];
      try {
        addresses = await raceAbort(o.policy.resolve(url.hostname, o.resolver), total.signal);
      } catch (err) {
        if (err instanceof FetchFailure) throw err;
        const e = err as Error;
        if (e.name === 'RefusedAddressError') throw new FetchFailure('refused-address', e.message);
        throw new FetchFailure('dns', `cannot resolve ${url.hostname}: ${e.message}`);
      }
      const res = await requestOnce(url, addresses[0], o, total.signal);
      if (REDIRECT.has(res.status)) {
        res.discard();
        if (!res.location) throw new FetchFailure('http-status', `HTTP ${res.status} without a Location header from ${url.host}`);
        if (hop + 1 > o.maxRedirects) throw new FetchFailure('too-many-redirects', `more than ${o.maxRedirects} redirects starting at ${rawUrl.slice(0, 200)}`);
        url = parseHttpUrl(new URL(res.location, url).toString());
        continue;
      }
      if (res.status !== 200) {
        res.discard();
        throw new FetchFailure('http-status', `HTTP ${res.status} from ${url.host}`, res.status);
      }
      const body = await res.readBody();
      return { finalUrl: url.toString(), contentType: res.contentType, body, redirects: hop };
    }
  } catch (err) {
    if (err instanceof FetchFailure) throw err;
    if (total.signal.aborted && total.signal.reason instanceof FetchFailure) throw total.signal.reason;
    throw new FetchFailure('network', (err as Error).message);
  } finally {
    clearTimeout(timer);
    o.signal?.removeEventListener('abort', onOuterAbort);
  }
}

function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e as Error);
      },
    );
  });
}

interface OpenResponse {
  status: number;
  location: string | undefined;
  contentType: string | undefined;
  discard(): void;
  readBody(): Promise<Buffer>;
}

function requestOnce(url: URL, addr: ResolvedAddress, o: GuardedGetOptions, signal: AbortSignal): Promise<OpenResponse> {
  return new Promise<OpenResponse>((resolve, reject) => {
    const client = url.protocol === 'https:' ? https : http;
    const req = client.request(url, {
      method: 'GET',
      lookup: pinnedLookup(addr),
      // A fresh socket per request: a pooled one could carry a connection past the guard.
      agent: false,
      signal,
      headers: { 'user-agent': o.userAgent, accept: 'image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8', 'accept-encoding': 'identity' },
    });
    const connectTimer = setTimeout(() => req.destroy(new FetchFailure('connect-timeout', `no connection to ${url.host} within ${o.connectTimeoutMs} ms`)), o.connectTimeoutMs);
    req.on('socket', (socket) => {
      socket.once(url.protocol === 'https:' ? 'secureConnect' : 'connect', () => clearTimeout(connectTimer));
    });
    req.on('error', (err) => {
      clearTimeout(connectTimer);
      if (signal.aborted && signal.reason instanceof FetchFailure) reject(signal.reason);
      else reject(err instanceof FetchFailure ? err : new FetchFailure('network', `${url.host}: ${err.message}`));
    });
    req.on('response', (res) => {
      clearTimeout(connectTimer);
      const header = (name: string) => {
        const v = res.headers[name];
        return Array.isArray(v) ? v[0] : v;
      };
      resolve({
        status: res.statusCode ?? 0,
        location: header('location'),
        contentType: header('content-type'),
        discard: () => res.destroy(),
        readBody: () =>
          new Promise<Buffer>((ok, fail) => {
            const declared = Number(header('content-length'));
            if (Number.isFinite(declared) && declared > o.maxBytes) {
              res.destroy();
              fail(new FetchFailure('too-large', `${url.host} declares ${declared} bytes, over the ${o.maxBytes}-byte limit`));
              return;
            }
            const encoding = header('content-encoding');
            if (encoding && encoding !== 'identity') {
              res.destroy();
              fail(new FetchFailure('not-an-image', `${url.host} sent a ${encoding}-encoded body; images are fetched uncompressed`));
              return;
            }
            const chunks: Buffer[] = [];
            let size = 0;
            // The first known cause wins: the stream reports a destroy as 'aborted'/'error'
            // without the reason we destroyed it for.
            let cause: FetchFailure | undefined;
            const failWith = (fallback: string) => {
              if (!cause && signal.aborted && signal.reason instanceof FetchFailure) cause = signal.reason;
              fail(cause ?? new FetchFailure('network', `${url.host}: ${fallback}`));
            };
            res.on('data', (c: Buffer) => {
              size += c.length;
              if (size > o.maxBytes) {
                cause ??= new FetchFailure('too-large', `body from ${url.host} exceeds the ${o.maxBytes}-byte limit`);
                res.destroy();
                return;
              }
              chunks.push(c);
            });
            res.on('end', () => ok(Buffer.concat(chunks, size)));
            res.on('error', (err) => failWith(err.message));
            res.on('aborted', () => failWith('connection closed mid-body'));
            res.on('close', () => {
              if (!res.complete) failWith('connection closed mid-body');
            });
          }),
      });
    });
    req.end();
  });
}
