/**
 * A focused fake of the Discord API on 127.0.0.1, enough for a real discord.js v14 Client:
 * REST under /api/v10 (messages, typing, interaction callbacks, webhooks, command
 * registration, GET /gateway/bot), a v10 gateway over WebSocket (HELLO, IDENTIFY, READY,
 * heartbeats, dispatches; plain JSON since discord.js has no zlib-sync here) and a CDN for
 * attachments. Every REST call is recorded, multipart uploads decoded, for tests to inspect.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { snowflake } from './ids.ts';
import { APP_ID, BOT_USER, type GuildFixture } from './payloads.ts';

export interface RecordedFile {
  readonly field: string;
  readonly filename: string;
  readonly contentType: string;
  readonly data: Buffer;
}

export interface RecordedRequest {
  readonly method: string;
  /** Path below /api/v10, e.g. `/channels/1/messages`. */
  readonly path: string;
  readonly query: URLSearchParams;
  /** JSON body, or `payload_json` of a multipart body. */
  readonly body: Record<string, unknown> | null;
  /** The JSON body as sent (arrays included). */
  readonly json: unknown;
  readonly files: readonly RecordedFile[];
  readonly multipart: boolean;
}

export interface GatewayConnection {
  readonly query: URLSearchParams;
  identify?: Record<string, unknown>;
  resume?: Record<string, unknown>;
  heartbeats: number;
}

export interface FakeDiscordOptions {
  readonly heartbeatIntervalMs?: number;
  readonly guilds?: readonly GuildFixture[];
  /** When set, REST calls with another bot token get 401 and IDENTIFY with another token closes 4004. */
  readonly acceptedToken?: string;
  /** Intent bits the "portal" has not enabled: IDENTIFY asking for them closes 4014. */
  readonly disallowedIntents?: number;
}

interface StoredMessage {
  id: string;
  channel_id: string;
  content: string;
  attachments: unknown[];
  message_reference?: unknown;
  webhook_id?: string;
}

type RouteHandler = (req: RecordedRequest, match: RegExpMatchArray) => { status: number; body?: unknown };


export class FakeDiscord {
  readonly requests: RecordedRequest[] = [];
  readonly connections: GatewayConnection[] = [];
  /** Interaction tokens whose callback answers 10062 Unknown interaction. */
  readonly expiredTokens = new Set<string>();
  /** Channels where uploads with files fail with 50013 Missing Permissions. */
  readonly noAttachChannels = new Set<string>();
  /** Channels that answer 10003 Unknown Channel (deleted). */
  readonly deletedChannels = new Set<string>();
  private readonly server = http.createServer((req, res) => void this.onHttp(req, res));
  private readonly wss = new WebSocketServer({ noServer: true });
  private readonly sockets = new Set<WebSocket>();
  private readonly cdn = new Map<string, { data: Buffer; contentType: string; delayMs: number }>();
  private readonly messages = new Map<string, StoredMessage>();
  private readonly waiters: { pred: (r: RecordedRequest) => boolean; resolve: (r: RecordedRequest) => void }[] = [];
  private readonly rateLimits: { method: string; pathPrefix: string; retryAfterS: number }[] = [];
  private seq = 0;
  private port = 0;
  readonly guilds: readonly GuildFixture[];
  private readonly heartbeatIntervalMs: number;
  private readonly acceptedToken?: string;
  private readonly disallowedIntents: number;

  constructor(options: FakeDiscordOptions = {}) {
    this.guilds = options.guilds ?? [];
    this.acceptedToken = options.acceptedToken;
    this.disallowedIntents = options.disallowedIntents ?? 0;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 1000;
    this.server.on('upgrade', (req, socket, head) => {
      if (!req.url?.startsWith('/gateway')) return socket.destroy();
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onGateway(ws, new URL(req.url ?? '/', 'http://x').searchParams));
    });
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const ws of this.sockets) ws.terminate();
    this.wss.close();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get apiBase(): string {
    return `${this.origin}/api`;
  }

  /** Serves bytes under the fake CDN and returns their URL. */
  addCdnFile(name: string, data: Buffer, contentType: string, delayMs = 0): string {
    const path = `/attachments/${snowflake()}/${encodeURIComponent(name)}`;
    this.cdn.set(path, { data, contentType, delayMs });
    return `${this.origin}${path}?ex=expires&is=now&hm=signature`;
  }

  /** Sends a gateway dispatch to every connected client. */
  dispatch(t: string, d: unknown): void {
    for (const ws of this.sockets) this.send(ws, { op: 0, t, s: ++this.seq, d });
  }

  /** Closes every gateway connection with `code` (4000 = unknown error: clients resume). */
  dropConnections(code = 4000): void {
    for (const ws of this.sockets) ws.close(code, 'dropped by the test');
  }

  /** The next request matching gets 429 with a short Retry-After, as Discord's rate limiter does. */
  rateLimitOnce(method: string, pathPrefix: string, retryAfterS = 0.2): void {
    this.rateLimits.push({ method, pathPrefix, retryAfterS });
  }

  /** Resolves with the first recorded request (past or future) matching `pred`. */
  waitForRequest(pred: (r: RecordedRequest) => boolean, timeoutMs = 5000): Promise<RecordedRequest> {
    const seen = this.requests.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timed out waiting for a matching request')), timeoutMs);
      this.waiters.push({
        pred,
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
      });
    });
  }

  requestsTo(pathPrefix: string): RecordedRequest[] {
    return this.requests.filter((r) => r.path.startsWith(pathPrefix));
  }

  // --- gateway -------------------------------------------------------------------------

  private onGateway(ws: WebSocket, query: URLSearchParams): void {
    const conn: GatewayConnection = { query, heartbeats: 0 };
    this.connections.push(conn);
    this.sockets.add(ws);
    ws.on('close', () => this.sockets.delete(ws));
    this.send(ws, { op: 10, d: { heartbeat_interval: this.heartbeatIntervalMs } });
    ws.on('message', (raw) => {
      const packet = JSON.parse(String(raw)) as { op: number; d: unknown };
      if (packet.op === 1) {
        conn.heartbeats++;
        this.send(ws, { op: 11 });
      } else if (packet.op === 2) {
        conn.identify = packet.d as Record<string, unknown>;
        if (this.acceptedToken !== undefined && conn.identify.token !== this.acceptedToken) ws.close(4004, 'Authentication failed.');
        else if (Number(conn.identify.intents) & this.disallowedIntents) ws.close(4014, 'Disallowed intent(s).');
        else this.sendReady(ws);
      } else if (packet.op === 6) {
        // Events sent while the client was away are not replayed: tests send nothing then.
        conn.resume = packet.d as Record<string, unknown>;
        this.send(ws, { op: 0, t: 'RESUMED', s: ++this.seq, d: {} });
      }
    });
  }

  private sendReady(ws: WebSocket): void {
    this.send(ws, {
      op: 0,
      t: 'READY',
      s: ++this.seq,
      d: {
        v: 10,
        user: BOT_USER,
        guilds: this.guilds.map((g) => ({ id: g.id, unavailable: true })),
        session_id: 'fake-session',
        resume_gateway_url: `ws://127.0.0.1:${this.port}/gateway`,
        shard: [0, 1],
        application: { id: APP_ID, flags: 0 },
        private_channels: [],
        relationships: [],
        presences: [],
        user_settings: {},
        guild_join_requests: [],
      },
    });
    for (const g of this.guilds) this.send(ws, { op: 0, t: 'GUILD_CREATE', s: ++this.seq, d: g.payload });
  }

  private send(ws: WebSocket, packet: unknown): void {
    if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(packet));
  }

  // --- HTTP ----------------------------------------------------------------------------

  private async onHttp(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.origin);
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks);

    if (req.method === 'GET' && url.pathname.startsWith('/attachments/')) {
      const file = this.cdn.get(url.pathname);
      if (!file) return this.reply(res, 404, { message: 'Not found' });
      if (file.delayMs > 0) await new Promise((r) => setTimeout(r, file.delayMs));
      res.writeHead(200, { 'content-type': file.contentType, 'content-length': file.data.length });
      res.end(file.data);
      return;
    }
    if (!url.pathname.startsWith('/api/v10/')) return this.reply(res, 404, { message: '404: Not Found', code: 0 });

    const recorded = await this.record(req, url, raw);
    if (this.acceptedToken !== undefined && req.headers.authorization !== `Bot ${this.acceptedToken}`) {
      this.requests.push(recorded);
      return this.reply(res, 401, { message: '401: Unauthorized', code: 0 });
    }
    this.requests.push(recorded);
    for (const w of [...this.waiters]) {
      if (w.pred(recorded)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(recorded);
      }
    }
    const limited = this.rateLimits.findIndex((l) => l.method === req.method && recorded.path.startsWith(l.pathPrefix));
    if (limited >= 0) {
      const [{ retryAfterS }] = this.rateLimits.splice(limited, 1);
      const text = JSON.stringify({ message: 'You are being rate limited.', retry_after: retryAfterS, global: false });
      res.writeHead(429, { 'content-type': 'application/json', 'retry-after': String(retryAfterS), 'x-ratelimit-scope': 'user' });
      res.end(text);
      return;
    }
    for (const [method, pattern, handler] of this.routes) {
      if (method !== req.method) continue;
      const match = recorded.path.match(pattern);
      if (match) {
        const out = handler(recorded, match);
        return this.reply(res, out.status, out.body);
      }
    }
    this.reply(res, 404, { message: `fake discord: no route for ${req.method} ${recorded.path}`, code: 0 });
  }

  private async record(req: http.IncomingMessage, url: URL, raw: Buffer): Promise<RecordedRequest> {
    const contentType = req.headers['content-type'] ?? '';
    const path = decodeURIComponent(url.pathname.slice('/api/v10'.length));
    const files: RecordedFile[] = [];
    let body: Record<string, unknown> | null = null;
    let json: unknown = null;
    const multipart = contentType.startsWith('multipart/form-data');
    if (multipart) {
      const form = await new Response(raw, { headers: { 'content-type': contentType } }).formData();
      for (const [field, value] of form.entries()) {
        if (typeof value === 'string') {
          if (field === 'payload_json') body = JSON.parse(value) as Record<string, unknown>;
        } else {
          files.push({ field, filename: value.name, contentType: value.type, data: Buffer.from(await value.arrayBuffer()) });
        }
      }
    } else if (raw.length > 0 && contentType.includes('json')) {
      json = JSON.parse(raw.toString('utf8')) as unknown;
      if (json !== null && typeof json === 'object' && !Array.isArray(json)) body = json as Record<string, unknown>;
    }
    return { method: req.method ?? 'GET', path, query: url.searchParams, body, json, files, multipart };
  }

  private reply(res: http.ServerResponse, status: number, body?: unknown): void {
    if (body === undefined) {
      res.writeHead(status);
      res.end();
      return;
    }
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  private storeMessage(channelId: string, req: RecordedRequest, webhook = false): StoredMessage {
    const body = req.body ?? {};
    const message: StoredMessage = {
      id: snowflake(),
      channel_id: channelId,
      content: typeof body.content === 'string' ? body.content : '',
      attachments: req.files.map((f, i) => ({
        id: snowflake(),
        filename: f.filename,
        size: f.data.length,
        url: `${this.origin}/attachments/out/${i}/${f.filename}`,
        proxy_url: `${this.origin}/attachments/out/${i}/${f.filename}`,
        content_type: f.contentType,
      })),
      message_reference: body.message_reference,
      webhook_id: webhook ? APP_ID : undefined,
    };
    this.messages.set(message.id, message);
    return message;
  }

  private messageJson(m: StoredMessage): Record<string, unknown> {
    return {
      ...m,
      author: BOT_USER,
      timestamp: new Date().toISOString(),
      edited_timestamp: null,
      tts: false,
      mention_everyone: false,
      mentions: [],
      mention_roles: [],
      embeds: [],
      pinned: false,
      type: m.message_reference ? 19 : 0,
      flags: 0,
    };
  }

  private channelErrors(channelId: string, req: RecordedRequest): { status: number; body: unknown } | null {
    if (this.deletedChannels.has(channelId)) return { status: 404, body: { message: 'Unknown Channel', code: 10003 } };
    if (this.noAttachChannels.has(channelId) && req.files.length > 0)
      return { status: 403, body: { message: 'Missing Permissions', code: 50013 } };
    return null;
  }

  private readonly routes: [string, RegExp, RouteHandler][] = [
    [
      'GET',
      /^\/gateway\/bot$/,
      () => ({
        status: 200,
        body: {
          url: `ws://127.0.0.1:${this.port}/gateway`,
          shards: 1,
          session_start_limit: { total: 1000, remaining: 999, reset_after: 14_400_000, max_concurrency: 1 },
        },
      }),
    ],
    ['GET', /^\/gateway$/, () => ({ status: 200, body: { url: `ws://127.0.0.1:${this.port}/gateway` } })],
    [
      'POST',
      /^\/channels\/(\d+)\/messages$/,
      (req, m) => this.channelErrors(m[1], req) ?? { status: 200, body: this.messageJson(this.storeMessage(m[1], req)) },
    ],
    [
      'PATCH',
      /^\/channels\/(\d+)\/messages\/(\d+)$/,
      (req, m) => {
        const err = this.channelErrors(m[1], req);
        if (err) return err;
        const stored = this.messages.get(m[2]);
        if (!stored) return { status: 404, body: { message: 'Unknown Message', code: 10008 } };
        const updated = this.storeMessage(m[1], req);
        this.messages.delete(updated.id);
        const merged = { ...stored, content: updated.content, attachments: updated.attachments };
        this.messages.set(stored.id, merged);
        return { status: 200, body: this.messageJson(merged) };
      },
    ],
    [
      'DELETE',
      /^\/channels\/(\d+)\/messages\/(\d+)$/,
      (_req, m) => (this.messages.delete(m[2]) ? { status: 204 } : { status: 404, body: { message: 'Unknown Message', code: 10008 } }),
    ],
    [
      'POST',
      /^\/channels\/(\d+)\/typing$/,
      (req, m) => (this.deletedChannels.has(m[1]) ? this.channelErrors(m[1], req)! : { status: 204 }),
    ],
    [
      'POST',
      /^\/interactions\/(\d+)\/([^/]+)\/callback$/,
      (_req, m) =>
        this.expiredTokens.has(m[2]) ? { status: 404, body: { message: 'Unknown interaction', code: 10062 } } : { status: 204 },
    ],
    [
      'PATCH',
      /^\/webhooks\/(\d+)\/([^/]+)\/messages\/@original$/,
      (req, m) => ({ status: 200, body: this.messageJson(this.storeMessage(`webhook-${m[2]}`, req, true)) }),
    ],
    ['DELETE', /^\/webhooks\/(\d+)\/([^/]+)\/messages\/@original$/, () => ({ status: 204 })],
    [
      'POST',
      /^\/webhooks\/(\d+)\/([^/]+)$/,
      (req, m) => ({ status: 200, body: this.messageJson(this.storeMessage(`webhook-${m[2]}`, req, true)) }),
    ],
    [
      'PUT',
      /^\/applications\/(\d+)\/(?:guilds\/(\d+)\/)?commands$/,
      (req) => ({
        status: 200,
        body: (Array.isArray(req.json) ? (req.json as Record<string, unknown>[]) : []).map((c) => ({
          ...c,
          id: snowflake(),
          application_id: APP_ID,
          version: '1',
        })),
      }),
    ],
  ];
}
