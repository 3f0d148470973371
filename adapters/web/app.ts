/** The HTTP surface of the web chat (Hono): the page, its JSON API and its event streams. */
import { readFileSync } from 'node:fs';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { streamSSE } from 'hono/streaming';
import { getConnInfo } from '@hono/node-server/conninfo';
import type { HistoryStore } from '../../src/conversation/history.ts';
import { conversationId } from '../../src/conversation/key.ts';
import type { AdapterLogger } from '../../src/conversation/logger.ts';
import type { ConversationKey, ImageInput, IncomingMessage, MessageHandler } from '../../src/conversation/types.ts';
import { ImageInputError } from '../../src/conversation/types.ts';
import { parseWebCommand, WEB_HELP } from './commands.ts';
import { exportConversation } from './export.ts';
import type { LiveConversations, LiveEvent } from './live.ts';
import { createWebResponder } from './responder.ts';
import { securityHeaders, sameOriginGuard, setSession, tokenGate, tokenMatches } from './security.ts';
import type { WebSettings } from './settings.ts';
import type { ShownSegment, TranscriptStore } from './store.ts';
import { acceptUploads, WebUploadError, type AcceptedImage } from './uploads.ts';

export interface WebAppDeps {
  readonly settings: WebSettings;
  readonly store: TranscriptStore;
  readonly live: LiveConversations;
  /** Set once the service started the adapter. */
  readonly handler: () => MessageHandler | undefined;
  /** The model's history, for Undo and Delete. */
  readonly history?: Pick<HistoryStore, 'dropLastExchange' | 'reset'>;
  readonly logger?: AdapterLogger;
  /** Resolves when the server stops, ending the event streams. */
  readonly stopping: Promise<void>;
  /** Answers being handled, awaited at shutdown. */
  readonly inFlight: Set<Promise<void>>;
}

const MAX_TEXT_CHARS = 20_000;
const PUBLIC = new URL('./public/', import.meta.url);
const ASSETS: Record<string, string> = {
  'app.js': 'text/javascript; charset=utf-8',
  'login.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};

export function webKey(conversation: string): ConversationKey {
  return { platform: 'web', workspace: 'local', channel: conversation };
}

export function createWebApp(deps: WebAppDeps): Hono {
  const { settings, store, live } = deps;
  const token = settings.token;
  const files = new Map(['index.html', 'login.html', ...Object.keys(ASSETS)].map((f) => [f, readFileSync(new URL(f, PUBLIC))]));
  const app = new Hono();
  app.use(securityHeaders());
  app.use(sameOriginGuard(token));
  app.use(tokenGate(token));

  const page = (c: Context, file: string) => {
    c.header('Cache-Control', 'no-store');
    return c.body(new Uint8Array(files.get(file)!), 200, { 'Content-Type': 'text/html; charset=utf-8' });
  };
  app.get('/', (c) => page(c, 'index.html'));
  app.get('/login', (c) => (token === undefined ? c.redirect('/', 303) : page(c, 'login.html')));
  app.get('/static/:file', (c) => {
    const file = c.req.param('file');
    const type = ASSETS[file];
    if (!type) return c.text('Not found', 404);
    c.header('Cache-Control', 'no-cache');
    return c.body(new Uint8Array(files.get(file)!), 200, { 'Content-Type': type });
  });

  app.post('/api/login', async (c) => {
    const body = (await c.req.json().catch(() => ({}))) as { token?: unknown };
    if (token === undefined) return c.json({ ok: true });
    if (!tokenMatches(token, body.token)) {
      // Slows guessing; the token itself is long enough that this is only a courtesy.
      await new Promise((r) => setTimeout(r, 300));
      return c.json({ error: 'That is not the token set in FROMAGE_WEB_TOKEN; check it and try again.' }, 401);
    }
    setSession(c, token);
    return c.json({ ok: true });
  });

  app.get('/api/conversations', (c) => c.json({ conversations: store.list() }));
  app.post('/api/conversations', (c) => c.json({ conversation: store.create() }, 201));

  const missing = (c: Context) => c.json({ error: 'There is no such conversation (it may have been removed); reload the page.' }, 404);

  app.get('/api/conversations/:id', (c) => {
    const id = c.req.param('id');
    const conversation = store.get(id);
    if (!conversation) return missing(c);
    return c.json({ conversation, entries: store.entries(id), pending: live.pendingOf(id) });
  });

  app.get('/api/conversations/:id/events', (c) => {
    const id = c.req.param('id');
    if (!store.get(id)) return missing(c);
    return streamSSE(c, async (stream) => {
      const unsubscribe = live.subscribe(id, (event: LiveEvent) => void stream.writeSSE({ event: event.type, data: JSON.stringify(event.data) }).catch(() => {}));
      const aborted = new Promise<void>((resolve) => stream.onAbort(resolve));
      // Proxies drop idle connections; a comment line every 20 s keeps the stream open.
      const heartbeat = setInterval(() => void stream.write(': keep-alive\n\n').catch(() => {}), 20_000);
      try {
        await stream.writeSSE({ event: 'ready', data: '{}' });
        await Promise.race([aborted, deps.stopping]);
      } finally {
        clearInterval(heartbeat);
        unsubscribe();
      }
    });
  });

  const uploadLimit = settings.maxImagesPerMessage * settings.maxImageBytes + 256 * 1024;
  app.post(
    '/api/conversations/:id/messages',
    bodyLimit({
      maxSize: uploadLimit,
      // The rest of the body is not read: the client must not send its next request on this connection.
      onError: (c) => c.json({ error: `That message is larger than ${Math.round(uploadLimit / 1024 / 1024)} MiB in all; send fewer or smaller images.` }, 413, { Connection: 'close' }),
    }),
    async (c) => {
      const id = c.req.param('id');
      if (!store.get(id)) return missing(c);
      const handler = deps.handler();
      if (!handler) return c.json({ error: 'The bot is starting or stopping; try again in a moment.' }, 503);
      let form: FormData;
      try {
        form = await c.req.formData();
      } catch {
        return c.json({ error: 'The message could not be read (expected a multipart form with text and images).' }, 400);
      }
      const rawText = form.get('text');
      const text = typeof rawText === 'string' ? rawText : '';
      if (text.length > MAX_TEXT_CHARS) return c.json({ error: `Your message has ${text.length} characters; the limit is ${MAX_TEXT_CHARS}.` }, 400);
      const files = form.getAll('images').filter((f): f is File => typeof f !== 'string');
      const command = parseWebCommand(text);
      if (command.kind === 'invalid') return c.json({ error: command.message }, 400);
      if (files.length > 0 && !(command.kind === 'intent' && command.intent.kind === 'chat'))
        return c.json({ error: 'Images go with a chat message; send them without a /command.' }, 400);
      if (command.kind === 'undo') return undo(c, id);
      let accepted: AcceptedImage[];
      try {
        accepted = await acceptUploads(files, settings);
      } catch (err) {
        if (err instanceof WebUploadError) return c.json({ error: err.message }, 400);
        throw err;
      }
      const segments: ShownSegment[] = [];
      if (text.trim()) segments.push({ type: 'text', text: text.trim() });
      if (accepted.length) {
        for (const image of accepted) store.putImage(image.hash, 'image/png', image.data);
        segments.push({ type: 'images', images: accepted.map((i) => ({ hash: i.hash, contentType: 'image/png', name: i.name, alt: i.name, width: i.width, height: i.height })) });
      }
      if (command.kind === 'help') {
        const entry = store.addUserEntry(id, 'help', segments, Date.now());
        live.publish(id, { type: 'entry', data: entry });
        live.publish(id, { type: 'entry', data: store.addBotEntry(id, entry.exchange, 'notice', 'help', [{ type: 'text', text: WEB_HELP }]) });
        return c.json({ entry }, 201);
      }
      const intent = command.intent;
      if (intent.kind === 'reset') {
        store.clear(id);
        live.publish(id, { type: 'reload', data: {} });
      }
      const entry = store.addUserEntry(id, intent.kind, segments, Date.now());
      live.publish(id, { type: 'entry', data: entry });
      const message: IncomingMessage = {
        key: webKey(id),
        id: `web-${entry.id}`,
        author: { id: getConnInfo(c).remote.address ?? 'local', name: 'you' },
        text: intent.kind === 'chat' ? text.trim() : intent.kind === 'retrieve' ? intent.query : '',
        images: accepted.map(imageInput),
        intent,
        receivedAt: new Date(entry.at),
      };
      live.begin(id, entry.exchange);
      const responder = createWebResponder(store, live, { conversation: id, exchange: entry.exchange, intent: intent.kind, query: intent.kind === 'retrieve' ? intent.query : undefined });
      const job = handler(message, responder)
        .catch((err: unknown) => deps.logger?.error({ err, conversation: id }, 'web message failed'))
        .finally(() => {
          live.end(id, entry.exchange);
          deps.inFlight.delete(job);
        });
      deps.inFlight.add(job);
      return c.json({ entry }, 202);
    },
  );

  const undo = (c: Context, id: string) => {
    if (live.busy(id)) return c.json({ error: 'An answer is still being written here; undo once it is done.' }, 409);
    const dropped = store.dropLastExchange(id);
    if (!dropped) return c.json({ error: 'There is nothing to undo in this conversation.' }, 409);
    if (dropped.intent === 'chat') deps.history?.dropLastExchange(conversationId(webKey(id)), dropped.at);
    live.publish(id, { type: 'reload', data: {} });
    return c.json({ undone: dropped.id });
  };
  app.post('/api/conversations/:id/undo', (c) => {
    const id = c.req.param('id');
    return store.get(id) ? undo(c, id) : missing(c);
  });

  app.delete('/api/conversations/:id', (c) => {
    const id = c.req.param('id');
    if (!store.get(id)) return missing(c);
    if (live.busy(id)) return c.json({ error: 'An answer is still being written here; delete the conversation once it is done.' }, 409);
    store.delete(id);
    deps.history?.reset(conversationId(webKey(id)));
    live.publish(id, { type: 'deleted', data: {} });
    return c.json({ deleted: id });
  });

  app.get('/api/conversations/:id/export', (c) => {
    const id = c.req.param('id');
    const conversation = store.get(id);
    if (!conversation) return missing(c);
    const html = exportConversation(conversation, store.entries(id), (hash) => store.image(hash));
    const day = new Date().toISOString().slice(0, 10);
    return c.body(html, 200, {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Disposition': `attachment; filename="fromage-conversation-${day}.html"`,
    });
  });

  app.get('/api/images/:hash', (c) => {
    const hash = c.req.param('hash');
    const image = /^[0-9a-f]{64}$/.test(hash) ? store.image(hash) : undefined;
    if (!image) return c.json({ error: 'No such image.' }, 404);
    const type = /^image\/(png|jpeg|gif|webp)$/.test(image.contentType) ? image.contentType : 'application/octet-stream';
    return c.body(new Uint8Array(image.data), 200, { 'Content-Type': type, 'Cache-Control': 'private, max-age=31536000, immutable' });
  });

  app.onError((err, c) => {
    deps.logger?.error({ err }, 'web request failed');
    return c.json({ error: 'Something went wrong on the server; try again.' }, 500);
  });
  return app;
}

function imageInput(image: AcceptedImage): ImageInput {
  return {
    name: image.name,
    contentType: 'image/png',
    size: image.data.length,
    async fetch(maxBytes) {
      if (image.data.length > maxBytes) throw new ImageInputError(`${image.name} is larger than the ${maxBytes} bytes allowed.`, 'too-large');
      return image.data;
    },
  };
}
