/**
 * What keeps the page to the people it is meant for: response headers (a CSP without inline
 * scripts), the token gate, and the guards against other sites (DNS rebinding, cross-site
 * requests).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Context, MiddlewareHandler } from 'hono';
import { getCookie, setCookie } from 'hono/cookie';
import { isLoopbackHost } from './settings.ts';

export const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' blob:",
  "connect-src 'self'",
  "form-action 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** Sent by the page's scripts on every state-changing request; a cross-site form cannot add it. */
export const CSRF_HEADER = 'x-fromage-csrf';
export const SESSION_COOKIE = 'fromage_web';

const STATE_CHANGING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
/** Reachable without the token: the login page and what it loads. */
const PUBLIC_PATHS = new Set(['/login', '/static/login.js', '/static/style.css', '/api/login']);

export function securityHeaders(): MiddlewareHandler {
  return async (c, next) => {
    await next();
    c.header('Content-Security-Policy', CSP);
    c.header('X-Content-Type-Options', 'nosniff');
    c.header('Referrer-Policy', 'no-referrer');
    c.header('X-Frame-Options', 'DENY');
    c.header('Cross-Origin-Opener-Policy', 'same-origin');
    c.header('Cross-Origin-Resource-Policy', 'same-origin');
  };
}

/** The cookie proves the token was typed once; derived from it, so it survives restarts and dies when the token changes. */
export function sessionValue(token: string): string {
  return createHmac('sha256', token).update('fromage-web-session-v1').digest('base64url');
}

function equalSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export function tokenMatches(token: string, offered: unknown): boolean {
  return typeof offered === 'string' && equalSecret(offered, token);
}

/** How the request proved itself: the page's cookie, an API client's bearer token, or nothing. */
export function authOf(c: Context, token: string | undefined): 'open' | 'cookie' | 'bearer' | undefined {
  if (token === undefined) return 'open';
  const bearer = /^Bearer\s+(.+)$/i.exec(c.req.header('authorization') ?? '')?.[1];
  if (bearer !== undefined && tokenMatches(token, bearer.trim())) return 'bearer';
  const cookie = getCookie(c, SESSION_COOKIE);
  if (cookie !== undefined && equalSecret(cookie, sessionValue(token))) return 'cookie';
  return undefined;
}

export function setSession(c: Context, token: string): void {
  setCookie(c, SESSION_COOKIE, sessionValue(token), {
    httpOnly: true,
    sameSite: 'Strict',
    path: '/',
    secure: new URL(c.req.url).protocol === 'https:' || c.req.header('x-forwarded-proto') === 'https',
    maxAge: 30 * 24 * 3600,
  });
}

export function tokenGate(token: string | undefined): MiddlewareHandler {
  return async (c, next) => {
    if (token === undefined || PUBLIC_PATHS.has(c.req.path) || authOf(c, token)) return next();
    if (c.req.path.startsWith('/api/'))
      return c.json({ error: 'This chat needs its token: sign in on the page, or send Authorization: Bearer <FROMAGE_WEB_TOKEN>.' }, 401);
    return c.redirect('/login', 303);
  };
}

/**
 * Without a token the page trusts whoever reaches it, so only loopback names may: a site that
 * rebinds its own name to 127.0.0.1 is refused by its Host header. State-changing requests must
 * come from the page itself (Fetch Metadata, Origin, and a header only scripts of this origin can set).
 */
export function sameOriginGuard(token: string | undefined): MiddlewareHandler {
  return async (c, next) => {
    const host = c.req.header('host') ?? '';
    if (token === undefined && !isLoopbackHost(hostnameOf(host)))
      return c.text(`Refused: this chat answers only at localhost or 127.0.0.1 (asked for "${host}"). To serve it under another name, set FROMAGE_WEB_TOKEN.`, 403);
    if (!STATE_CHANGING.has(c.req.method) || authOf(c, token) === 'bearer') return next();
    const site = c.req.header('sec-fetch-site');
    if (site !== undefined && site !== 'same-origin' && site !== 'none') return c.json({ error: 'Refused: the request came from another site.' }, 403);
    const origin = c.req.header('origin');
    if (origin !== undefined && origin !== 'null' && hostOf(origin) !== host.toLowerCase())
      return c.json({ error: `Refused: the request came from ${origin}, not from this page. Behind a reverse proxy, pass the original Host header through.` }, 403);
    if (origin === 'null') return c.json({ error: 'Refused: the request came from an opaque origin.' }, 403);
    if (c.req.header(CSRF_HEADER) !== '1') return c.json({ error: `Refused: the ${CSRF_HEADER} header is missing; only the chat page may change things here.` }, 403);
    return next();
  };
}

function hostnameOf(host: string): string {
  try {
    return new URL(`http://${host}`).hostname;
  } catch {
    return '';
  }
}

function hostOf(origin: string): string {
  try {
    return new URL(origin).host.toLowerCase();
  } catch {
    return '';
  }
}
