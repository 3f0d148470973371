/**
 * What the web chat needs to know, and the one rule it enforces before listening: a page
 * reachable from other machines must ask for a token.
 */
import { isIP } from 'node:net';
import { UserFacingError } from '../../src/conversation/errors.ts';

export interface WebSettings {
  readonly host: string;
  /** 0 picks a free port (tests). */
  readonly port: number;
  /** Required when `host` is not a loopback address. */
  readonly token?: string;
  /** SQLite file holding the conversations as shown (`:memory:` in tests). */
  readonly storePath: string;
  readonly maxImagesPerMessage: number;
  readonly maxImageBytes: number;
}

/** Port `npm start` uses when no platform is configured and FROMAGE_WEB_PORT is unset (Gradio's, as in FROMAGe's demo). */
export const DEFAULT_WEB_PORT = 7860;

export class WebConfigError extends UserFacingError {}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || /^::ffff:127\./.test(h);
  return false;
}

/** Refuses, before anything listens, a page open to the network without a token. */
export function checkWebSettings(settings: WebSettings): void {
  if (!isLoopbackHost(settings.host) && !settings.token)
    throw new WebConfigError(
      `FROMAGE_WEB_HOST=${settings.host} makes the web chat reachable from other machines, and FROMAGE_WEB_TOKEN is not set. ` +
        'Set FROMAGE_WEB_TOKEN to a long random secret (for example `openssl rand -hex 32`), or keep FROMAGE_WEB_HOST=127.0.0.1 and put a reverse proxy in front (see README "In the browser").',
    );
  if (settings.token !== undefined && settings.token.length < 16)
    throw new WebConfigError('FROMAGE_WEB_TOKEN is shorter than 16 characters; use a long random secret (for example `openssl rand -hex 32`).');
}
