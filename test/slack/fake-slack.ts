/**
 * A Slack double on 127.0.0.1: the Web API methods the adapter calls, the external upload
 * URL, a private file host (for url_private_download), response_url endpoints, and the
 * Socket Mode WebSocket. It keeps a timeline of the messages in each channel so tests can
 * assert what a user would see, in order.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';

export interface PostedMessage {
  ts: string;
  channel: string;
  threadTs?: string;
  text?: string;
  /** File names, in upload order, for messages created by files.completeUploadExternal. */
  files?: string[];
  deleted?: boolean;
}

export interface ApiCall {
  method: string;
  args: Record<string, string>;
  authorization?: string;
  at: number;
}

export interface HostedFile {
  status?: number;
  headers?: Record<string, string>;
  body?: Buffer | string;
  /** Served after this long (a slow download). */
  delayMs?: number;
}

export interface FileRequest {
  path: string;
  authorization?: string;
}

export const BOT_TOKEN = 'xoxb-test-bot-token-0123456789';
export const APP_TOKEN = 'xapp-1-test-app-token-0123456789';
export const BOT_USER_ID = 'UBOT';
export const TEAM_ID = 'T1';

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of req) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

function json(res: ServerResponse, body: unknown, status = 200): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

export class FakeSlack {
  readonly calls: ApiCall[] = [];
  readonly messages: PostedMessage[] = [];
  readonly files = new Map<string, HostedFile>();
  readonly fileRequests: FileRequest[] = [];
  readonly responses = new Map<string, Array<Record<string, unknown>>>();
  readonly uploads = new Map<string, { filename: string; bytes?: Buffer }>();
  readonly socketAcks: string[] = [];
  /** files.info answers, by file id. */
  readonly fileInfos = new Map<string, Record<string, unknown>>();
  /** Errors to return for a method, e.g. chat.postMessage -> not_in_channel. */
  readonly failures = new Map<string, string>();
  private server: Server | undefined;
  private wss: WebSocketServer | undefined;
  /** Where apps.connections.open sends the client instead of this fake's socket (an unreachable server). */
  socketUrlOverride: string | undefined;
  private sockets = new Set<WebSocket>();
  private nextTs = 1000;
  private nextFile = 1;
  port = 0;

  get base(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  get apiUrl(): string {
    return `${this.base}/api/`;
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      void this.route(req, res).catch((err: unknown) => json(res, { ok: false, error: String(err) }, 500));
    });
    this.wss = new WebSocketServer({ noServer: true });
    this.server.on('upgrade', (req, socket, head) => {
      this.wss?.handleUpgrade(req, socket, head, (ws) => {
        this.sockets.add(ws);
        ws.on('message', (data) => {
          const parsed = JSON.parse(String(data)) as { envelope_id?: string };
          if (parsed.envelope_id) this.socketAcks.push(parsed.envelope_id);
        });
        ws.on('close', () => this.sockets.delete(ws));
        ws.send(JSON.stringify({ type: 'hello', num_connections: 1, connection_info: { app_id: 'A1' } }));
      });
    });
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    for (const ws of this.sockets) ws.terminate();
    this.wss?.close();
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()));
  }

  /** Sends an events_api envelope to every connected Socket Mode client. */
  deliverOverSocket(envelopeId: string, payload: unknown, retryAttempt = 0): number {
    const frame = { envelope_id: envelopeId, type: 'events_api', payload, accepts_response_payload: false, retry_attempt: retryAttempt, retry_reason: retryAttempt ? 'timeout' : '' };
    for (const ws of this.sockets) ws.send(JSON.stringify(frame));
    return this.sockets.size;
  }

  responseUrl(id: string): string {
    return `${this.base}/response/${id}`;
  }

  /** What a user sees in a thread (or a channel's top level when threadTs is undefined). */
  thread(channel: string, threadTs?: string): PostedMessage[] {
    return this.messages.filter((m) => m.channel === channel && m.threadTs === threadTs && !m.deleted);
  }

  callsTo(method: string): ApiCall[] {
    return this.calls.filter((c) => c.method === method);
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.base);
    const body = await readBody(req);
    if (url.pathname.startsWith('/api/')) return this.api(url.pathname.slice(5), req, body, res);
    if (url.pathname.startsWith('/upload/')) {
      const id = url.pathname.slice(8);
      const form = await new Request(this.base, { method: 'POST', headers: req.headers as Record<string, string>, body }).formData();
      const file = form.get('body');
      const upload = this.uploads.get(id);
      if (!upload || !(file instanceof Blob)) return json(res, { ok: false }, 400);
      upload.bytes = Buffer.from(await file.arrayBuffer());
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('OK');
      return;
    }
    if (url.pathname.startsWith('/response/')) {
      const id = url.pathname.slice(10);
      const list = this.responses.get(id) ?? [];
      list.push(JSON.parse(body.toString('utf8')) as Record<string, unknown>);
      this.responses.set(id, list);
      return json(res, { ok: true });
    }
    if (url.pathname.startsWith('/files/')) {
      this.fileRequests.push({ path: url.pathname, authorization: req.headers.authorization });
      const hosted = this.files.get(url.pathname);
      if (!hosted) {
        res.writeHead(404).end();
        return;
      }
      if (hosted.delayMs) await new Promise((r) => setTimeout(r, hosted.delayMs));
      res.writeHead(hosted.status ?? 200, hosted.headers ?? { 'content-type': 'application/octet-stream' });
      res.end(hosted.body ?? '');
      return;
    }
    res.writeHead(404).end();
  }

  private api(method: string, req: IncomingMessage, body: Buffer, res: ServerResponse): void {
    const args = Object.fromEntries(new URLSearchParams(body.toString('utf8')));
    this.calls.push({ method, args, authorization: req.headers.authorization, at: Date.now() });
    const expectedToken = method === 'apps.connections.open' ? APP_TOKEN : BOT_TOKEN;
    if (req.headers.authorization !== `Bearer ${expectedToken}`) return json(res, { ok: false, error: 'invalid_auth' });
    const failure = this.failures.get(method);
    if (failure) return json(res, { ok: false, error: failure });
    switch (method) {
      case 'auth.test':
        return json(res, { ok: true, url: 'https://fake.slack.com/', team: 'Fake', user: 'fromage', team_id: TEAM_ID, user_id: BOT_USER_ID, bot_id: 'BBOT' });
      case 'apps.connections.open':
        return json(res, { ok: true, url: this.socketUrlOverride ?? `ws://127.0.0.1:${this.port}/socket` });
      case 'chat.postMessage': {
        const ts = `${this.nextTs++}.000100`;
        this.messages.push({ ts, channel: args.channel, threadTs: args.thread_ts, text: args.text });
        return json(res, { ok: true, channel: args.channel, ts });
      }
      case 'chat.update': {
        const m = this.messages.find((x) => x.channel === args.channel && x.ts === args.ts);
        if (!m) return json(res, { ok: false, error: 'message_not_found' });
        m.text = args.text;
        return json(res, { ok: true, channel: args.channel, ts: args.ts });
      }
      case 'chat.delete': {
        const m = this.messages.find((x) => x.channel === args.channel && x.ts === args.ts);
        if (!m) return json(res, { ok: false, error: 'message_not_found' });
        m.deleted = true;
        return json(res, { ok: true });
      }
      case 'files.getUploadURLExternal': {
        const id = `F${this.nextFile++}`;
        this.uploads.set(id, { filename: args.filename });
        return json(res, { ok: true, upload_url: `${this.base}/upload/${id}`, file_id: id });
      }
      case 'files.completeUploadExternal': {
        const files = JSON.parse(args.files) as Array<{ id: string }>;
        const names = files.map((f) => {
          const upload = this.uploads.get(f.id);
          if (!upload?.bytes) throw new Error(`file ${f.id} completed before its bytes were uploaded`);
          return upload.filename;
        });
        const ts = `${this.nextTs++}.000100`;
        this.messages.push({ ts, channel: args.channel_id, threadTs: args.thread_ts, files: names });
        return json(res, { ok: true, files: files.map((f) => ({ id: f.id })) });
      }
      case 'files.info': {
        const file = this.fileInfos.get(args.file);
        return json(res, file ? { ok: true, file } : { ok: false, error: 'file_not_found' });
      }
      default:
        return json(res, { ok: false, error: 'unknown_method' });
    }
  }
}

/** A server on another loopback port: a host the token must never reach. */
export class ForeignHost {
  readonly requests: FileRequest[] = [];
  private server: Server | undefined;
  port = 0;

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      this.requests.push({ path: req.url ?? '', authorization: req.headers.authorization });
      res.writeHead(200, { 'content-type': 'image/png' });
      res.end(Buffer.from([0x89, 0x50, 0x4e, 0x47]));
    });
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()));
  }
}
