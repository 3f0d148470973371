/**
 * Downloads a private Slack file with the bot token. The token is a credential for the
 * whole workspace, so it is only ever sent to Slack's own file host (or the configured
 * Slack-compatible API host): the URL is checked before the request and again on every
 * redirect, which is why redirects are followed by hand.
 */
import { ImageInputError } from '../../src/conversation/types.ts';

export const SLACK_FILE_ORIGIN = 'https://files.slack.com';
const MAX_REDIRECTS = 5;
const HTML_SNIFF_BYTES = 512;

/** Origins (scheme://host:port) that may receive the bot token. */
export function tokenOrigins(slackApiUrl: string): ReadonlySet<string> {
  return new Set([SLACK_FILE_ORIGIN, new URL(slackApiUrl).origin]);
}

export interface DownloadOptions {
  readonly token: string;
  readonly allowedOrigins: ReadonlySet<string>;
  readonly maxBytes: number;
  readonly timeoutMs?: number;
  /** Shown in messages to the user. */
  readonly fileName: string;
}

export function missingFilesReadScope(fileName: string): ImageInputError {
  return new ImageInputError(
    `Slack sent its sign-in page instead of ${fileName}: the app lacks the files:read scope. ` +
      'Add files:read under OAuth & Permissions, reinstall the app to the workspace, and send the image again.',
    'unreachable',
  );
}

function foreignHost(fileName: string, url: URL): ImageInputError {
  return new ImageInputError(
    `${fileName} points outside Slack (${url.host}); I only download files hosted by Slack. Upload the image to Slack directly.`,
    'unreachable',
  );
}

function tooLarge(fileName: string, maxBytes: number): ImageInputError {
  return new ImageInputError(`${fileName} is larger than the ${formatBytes(maxBytes)} limit. Send a smaller image.`, 'too-large');
}

export function formatBytes(n: number): string {
  if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1).replace(/\.0$/, '')} MB`;
  if (n >= 1024) return `${Math.round(n / 1024)} KB`;
  return `${n} bytes`;
}

/** Without files:read Slack redirects to the workspace's sign-in page on <team>.slack.com. */
function isSlackSignInHost(url: URL): boolean {
  return url.protocol === 'https:' && (url.hostname === 'slack.com' || url.hostname.endsWith('.slack.com'));
}

function looksLikeHtml(head: Buffer): boolean {
  const start = head.subarray(0, HTML_SNIFF_BYTES).toString('utf8').trimStart().toLowerCase();
  return start.startsWith('<!doctype html') || start.startsWith('<html') || start.startsWith('<head');
}

export async function downloadSlackFile(rawUrl: string, options: DownloadOptions): Promise<Buffer> {
  const { fileName } = options;
  let url: URL;
  try {
    url = new URL(rawUrl);
  } catch {
    throw new ImageInputError(`Slack gave no usable download link for ${fileName}.`, 'unreachable');
  }
  const signal = AbortSignal.timeout(options.timeoutMs ?? 30_000);
  for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
    if (!options.allowedOrigins.has(url.origin)) {
      if (hop > 0 && isSlackSignInHost(url)) throw missingFilesReadScope(fileName);
      throw foreignHost(fileName, url);
    }
    let res: Response;
    try {
      res = await fetch(url, { headers: { authorization: `Bearer ${options.token}` }, redirect: 'manual', signal });
    } catch (err) {
      const why = signal.aborted ? 'timed out' : (err as Error).message;
      throw new ImageInputError(`Could not download ${fileName} from Slack (${why}). Try again in a moment.`, 'unreachable');
    }
    if (res.status >= 300 && res.status < 400) {
      const location = res.headers.get('location');
      await res.body?.cancel();
      if (!location) break;
      url = new URL(location, url);
      continue;
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw new ImageInputError(`Slack answered ${res.status} when I downloaded ${fileName}. Try uploading it again.`, 'unreachable');
    }
    if (/text\/html/i.test(res.headers.get('content-type') ?? '')) {
      await res.body?.cancel();
      throw missingFilesReadScope(fileName);
    }
    const declared = Number(res.headers.get('content-length') ?? NaN);
    if (Number.isFinite(declared) && declared > options.maxBytes) {
      await res.body?.cancel();
      throw tooLarge(fileName, options.maxBytes);
    }
    let body: Buffer;
    try {
      body = await readCapped(res, options.maxBytes, fileName);
    } catch (err) {
      if (err instanceof ImageInputError) throw err;
      throw new ImageInputError(`The download of ${fileName} from Slack broke off. Try again in a moment.`, 'unreachable');
    }
    if (looksLikeHtml(body)) throw missingFilesReadScope(fileName);
    return body;
  }
  throw new ImageInputError(`Slack redirected too often while I downloaded ${fileName}. Try again later.`, 'unreachable');
}

/** Reads the body, stopping as soon as it passes the limit so a huge file costs no memory. */
async function readCapped(res: Response, maxBytes: number, fileName: string): Promise<Buffer> {
  if (!res.body) return Buffer.alloc(0);
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let total = 0;
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel();
      throw tooLarge(fileName, maxBytes);
    }
    parts.push(value);
  }
  return Buffer.concat(parts);
}
