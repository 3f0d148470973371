/**
 * Drives the Slack adapter in HTTP mode the way Slack does: signed requests to Bolt's
 * receiver on loopback, with the Web API pointed at the fake.
 */
import { createHmac } from 'node:crypto';
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/log.ts';
import { ImageInputError, type IncomingMessage, type MessageHandler, type ReplyImage } from '../../src/conversation/types.ts';
import { createSlackAdapter, type SlackAdapter } from '../../adapters/slack/index.ts';
import { APP_TOKEN, BOT_TOKEN, FakeSlack } from './fake-slack.ts';

export const SIGNING_SECRET = 'test-signing-secret';
export const MAX_IMAGE_BYTES = 64 * 1024;

export const PNG = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(64, 1)]);
export const JPEG = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(64, 2)]);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function isImageMagic(b: Buffer): boolean {
  const png = b.subarray(0, 4).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47]));
  const jpeg = b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;
  const webp = b.subarray(0, 4).toString('latin1') === 'RIFF' && b.subarray(8, 12).toString('latin1') === 'WEBP';
  return png || jpeg || webp;
}

export function replyImage(filename: string, data = PNG): ReplyImage {
  return { data, contentType: 'image/png', filename, source: `https://example.org/${filename}`, score: 12.5 };
}

/**
 * The service handler's double: shows progress, fetches every image (replying with the
 * adapter's ImageInputError message, or a corrupt-image error for bytes that are not
 * PNG/JPEG/WebP, as the real handler does after decoding), then answers with interleaved
 * text and images.
 */
export function handlerDouble(received: IncomingMessage[], fetched: Buffer[]): MessageHandler {
  return async (message, responder) => {
    received.push(message);
    const notice = (text: string) => responder.send({ kind: 'notice', segments: [{ type: 'text', text }] });
    if (message.intent.kind === 'reset') return notice('Conversation reset.');
    if (message.intent.kind === 'help') return notice('Mention me with an image.');
    await responder.typing();
    await responder.progress({ state: 'queued', position: 2, etaSeconds: 8 });
    if (message.text === 'slow progress') {
      // Progress spread over 1.5 s: the throttle must hold edits to one per 1.2 s.
      await sleep(300);
      await responder.progress({ state: 'queued', position: 1, etaSeconds: 4 });
      await sleep(300);
      await responder.progress({ state: 'running', text: 'Looking at your image…' });
      await sleep(900);
    }
    await responder.progress({ state: 'running' });
    for (const image of message.images) {
      try {
        const bytes = await image.fetch(MAX_IMAGE_BYTES);
        if (!isImageMagic(bytes)) throw new ImageInputError(`${image.name} is not a readable image (corrupt or unsupported).`, 'corrupt');
        fetched.push(bytes);
      } catch (err) {
        if (!(err instanceof ImageInputError)) throw err;
        return responder.send({ kind: 'error', segments: [{ type: 'text', text: err.message }] });
      }
    }
    if (message.intent.kind === 'retrieve') {
      return responder.send({
        kind: 'answer',
        segments: [
          { type: 'text', text: `Results for ${message.intent.query}` },
          { type: 'images', images: [replyImage('r1.png'), replyImage('r2.png')] },
        ],
      });
    }
    await responder.send({
      kind: 'answer',
      segments: [
        { type: 'text', text: 'I see <a cat> & a dog' },
        { type: 'images', images: [replyImage('first.png'), replyImage('second.png')] },
        { type: 'text', text: 'Anything else?' },
      ],
    });
  };
}

export async function startHttpAdapter(fake: FakeSlack, handler: MessageHandler, statusIntervalMs = 1200): Promise<SlackAdapter> {
  const config = loadConfig({
    SLACK_BOT_TOKEN: BOT_TOKEN,
    SLACK_SIGNING_SECRET: SIGNING_SECRET,
    SLACK_PORT: '3000',
    SLACK_API_URL: fake.apiUrl,
    FROMAGE_MAX_IMAGE_BYTES: String(MAX_IMAGE_BYTES),
  });
  const adapter = createSlackAdapter(config, createLogger({ LOG_LEVEL: 'silent' }), {
    listen: { host: '127.0.0.1', port: 0 },
    clientOptions: { retryConfig: { retries: 0 } },
    statusIntervalMs,
  });
  await adapter.start(handler);
  return adapter;
}

export async function startSocketAdapter(fake: FakeSlack, handler: MessageHandler): Promise<SlackAdapter> {
  const config = loadConfig({ SLACK_BOT_TOKEN: BOT_TOKEN, SLACK_APP_TOKEN: APP_TOKEN, SLACK_API_URL: fake.apiUrl });
  const adapter = createSlackAdapter(config, createLogger({ LOG_LEVEL: 'silent' }), { clientOptions: { retryConfig: { retries: 0 } } });
  await adapter.start(handler);
  return adapter;
}

export function sign(body: string, timestamp = Math.floor(Date.now() / 1000), secret = SIGNING_SECRET): Record<string, string> {
  const signature = `v0=${createHmac('sha256', secret).update(`v0:${timestamp}:${body}`).digest('hex')}`;
  return { 'x-slack-request-timestamp': String(timestamp), 'x-slack-signature': signature };
}

export interface PostOptions {
  headers?: Record<string, string>;
  timestamp?: number;
  secret?: string;
}

export async function postEvent(port: number, payload: unknown, options: PostOptions = {}): Promise<Response> {
  const body = JSON.stringify(payload);
  return fetch(`http://127.0.0.1:${port}/slack/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...sign(body, options.timestamp, options.secret), ...options.headers },
    body,
  });
}

export async function postCommand(port: number, fields: Record<string, string>): Promise<Response> {
  const body = new URLSearchParams(fields).toString();
  return fetch(`http://127.0.0.1:${port}/slack/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...sign(body) },
    body,
  });
}

let eventCounter = 0;

export function eventEnvelope(event: Record<string, unknown>, eventId = `Ev${++eventCounter}`): Record<string, unknown> {
  return { token: 'legacy', team_id: 'T1', api_app_id: 'A1', type: 'event_callback', event_id: eventId, event_time: 1, event, authorizations: [{ team_id: 'T1', user_id: 'UBOT', is_bot: true }] };
}

export async function eventually(check: () => boolean, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > timeoutMs) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
