/**
 * The web chat's HTTP surface without a browser: the refusals (token gate, other sites, other
 * host names, oversized or non-image uploads) and the saved-conversation file.
 */
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWebAdapter, WebConfigError } from '../../adapters/web/index.ts';
import { sessionValue } from '../../adapters/web/security.ts';
import { isLoopbackHost } from '../../adapters/web/settings.ts';
import { pngImage, replyImage, ScriptedEngine, startWebChat, type WebChat } from './harness.ts';

const TOKEN = 'test-token-0123456789abcdef';
const page = { 'x-fromage-csrf': '1' };

async function newConversation(chat: WebChat, headers: Record<string, string> = page): Promise<string> {
  const res = await fetch(`${chat.url}api/conversations`, { method: 'POST', headers });
  expect(res.status).toBe(201);
  return ((await res.json()) as { conversation: { id: string } }).conversation.id;
}

async function post(chat: WebChat, id: string, text: string, files: { name: string; data: Buffer; type?: string }[] = [], headers: Record<string, string> = page) {
  const form = new FormData();
  form.append('text', text);
  for (const f of files) form.append('images', new Blob([new Uint8Array(f.data)], { type: f.type ?? 'image/png' }), f.name);
  const res = await fetch(`${chat.url}api/conversations/${id}/messages`, { method: 'POST', body: form, headers });
  return { status: res.status, body: (await res.json()) as { error?: string; entry?: { exchange: number } } };
}

async function waitForEntries(chat: WebChat, id: string, n: number) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const body = (await (await fetch(`${chat.url}api/conversations/${id}`)).json()) as { entries: { role: string; kind: string; segments: { type: string; text?: string }[] }[]; pending: unknown[] };
    if (body.entries.length >= n && body.pending.length === 0) return body.entries;
    if (Date.now() > deadline) throw new Error(`expected ${n} entries, have ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('web chat settings', () => {
  it('refuses to listen beyond loopback without FROMAGE_WEB_TOKEN, naming the variable', () => {
    const make = (host: string, token?: string) => () =>
      createWebAdapter({ host, port: 0, token, storePath: ':memory:', maxImagesPerMessage: 4, maxImageBytes: 1024 });
    expect(make('0.0.0.0')).toThrow(WebConfigError);
    expect(make('0.0.0.0')).toThrow(/FROMAGE_WEB_TOKEN/);
    expect(make('192.168.1.20')).toThrow(/FROMAGE_WEB_HOST=192\.168\.1\.20/);
    expect(make('0.0.0.0', 'short')).toThrow(/16 characters/);
    expect(make('0.0.0.0', TOKEN)).not.toThrow();
    expect(make('127.0.0.1')).not.toThrow();
    expect(make('::1')).not.toThrow();
    expect(['localhost', '127.0.0.2', '[::1]'].every(isLoopbackHost)).toBe(true);
    expect(['0.0.0.0', 'example.com', '10.0.0.1', '::'].some(isLoopbackHost)).toBe(false);
  });

  it('says which port is taken when it cannot listen', async () => {
    const first = await startWebChat({ engine: new ScriptedEngine(() => undefined) });
    const port = Number(new URL(first.url).port);
    const second = createWebAdapter({ host: '127.0.0.1', port, storePath: ':memory:', maxImagesPerMessage: 4, maxImageBytes: 1024 });
    await expect(second.start(async () => {})).rejects.toThrow(`Port ${port} on 127.0.0.1 is already in use; set FROMAGE_WEB_PORT`);
    await first.close();
    // 203.0.113.0/24 is documentation space: no machine has it.
    const elsewhere = createWebAdapter({ host: '203.0.113.7', port: 0, token: TOKEN, storePath: ':memory:', maxImagesPerMessage: 4, maxImageBytes: 1024 });
    await expect(elsewhere.start(async () => {})).rejects.toThrow('FROMAGE_WEB_HOST=203.0.113.7 is not an address of this machine');
  });
});

describe('web chat without a token (loopback)', () => {
  let chat: WebChat;
  let engine: ScriptedEngine;
  beforeAll(async () => {
    engine = new ScriptedEngine((q) =>
      q === 'pictures please'
        ? { segments: [{ type: 'text', text: 'a <b>cat</b> & "dog"' }, { type: 'images', images: [] }] }
        : undefined,
    );
    chat = await startWebChat({ engine, maxImagesPerMessage: 2, maxImageBytes: 4096 });
  });
  afterAll(() => chat.close());

  it('serves the page with a CSP that allows no inline script, and security headers', async () => {
    const res = await fetch(chat.url);
    expect(res.status).toBe(200);
    const csp = res.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain('unsafe-inline');
    expect(csp).toContain("frame-ancestors 'none'");
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    const html = await res.text();
    expect(html).not.toMatch(/<script>(?!<\/script>)|<script(?![^>]*\bsrc=)[^>]*>/);
    expect(html).not.toMatch(/\son\w+=/);
  });

  it('answers only to loopback host names (no DNS rebinding)', async () => {
    // fetch() may not set Host; a rebinding attack's browser sends the attacker's name there.
    const asked = (host: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = request(chat.url, { headers: { host } }, (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.end();
      });
    const evil = await asked('evil.example:80');
    expect(evil.status).toBe(403);
    expect(evil.body).toContain('FROMAGE_WEB_TOKEN');
    expect((await asked(`localhost:${new URL(chat.url).port}`)).status).toBe(200);
  });

  it('refuses state changes from other sites or without the page header', async () => {
    const url = `${chat.url}api/conversations`;
    expect((await fetch(url, { method: 'POST' })).status).toBe(403);
    expect((await fetch(url, { method: 'POST', headers: { ...page, origin: 'https://evil.example' } })).status).toBe(403);
    expect((await fetch(url, { method: 'POST', headers: { ...page, 'sec-fetch-site': 'cross-site' } })).status).toBe(403);
    const refused = await fetch(url, { method: 'POST', headers: { origin: chat.url.slice(0, -1) } });
    expect(refused.status).toBe(403);
    expect(((await refused.json()) as { error: string }).error).toContain('x-fromage-csrf');
    expect((await fetch(url, { method: 'POST', headers: { ...page, origin: chat.url.slice(0, -1), 'sec-fetch-site': 'same-origin' } })).status).toBe(201);
  });

  it('checks uploads: count, size and image bytes, each with a message naming the fix', async () => {
    const id = await newConversation(chat);
    const small = await pngImage(8, 8);
    const tooMany = await post(chat, id, 'hi', [1, 2, 3].map((i) => ({ name: `${i}.png`, data: small })));
    expect(tooMany).toMatchObject({ status: 400, body: { error: 'You attached 3 images; the limit is 2 per message. Remove some and send again.' } });
    const big = await post(chat, id, 'hi', [{ name: 'big.png', data: Buffer.concat([small, Buffer.alloc(5000)]) }]);
    expect(big.status).toBe(400);
    expect(big.body.error).toMatch(/^big\.png is 0\.0 MiB; the limit is 0\.0 MiB per image/);
    const text = await post(chat, id, 'hi', [{ name: 'notes.txt', data: Buffer.from('just some text'), type: 'image/png' }]);
    expect(text).toMatchObject({ status: 400, body: { error: 'notes.txt is not an image I can read; send a PNG, JPEG, GIF or WebP file.' } });
    const svg = await post(chat, id, 'hi', [{ name: 'x.svg', data: Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'), type: 'image/svg+xml' }]);
    expect(svg.body.error).toContain('x.svg is not an image');
    const corrupt = await post(chat, id, 'hi', [{ name: 'cut.png', data: small.subarray(0, 40) }]);
    expect(corrupt.status).toBe(400);
    expect(corrupt.body.error).toContain('cut.png');
    // Nothing refused reached the conversation.
    expect((await waitForEntries(chat, id, 0)).length).toBe(0);
    const huge = await fetch(`${chat.url}api/conversations/${id}/messages`, { method: 'POST', headers: page, body: new Uint8Array(2 * 4096 + 300 * 1024) });
    expect(huge.status).toBe(413);
  });

  it('refuses a command with images, an unknown command, and undo with nothing to undo', async () => {
    const id = await newConversation(chat);
    expect((await post(chat, id, '/retrieve cats', [{ name: 'a.png', data: await pngImage(8, 8) }])).body.error).toBe('Images go with a chat message; send them without a /command.');
    expect((await post(chat, id, '/frobnicate')).body.error).toBe('Unknown command /frobnicate. Type /help to see the commands.');
    expect((await post(chat, id, '/settings words=9999')).body.error).toMatch(/^Setting words:/);
    const undo = await fetch(`${chat.url}api/conversations/${id}/undo`, { method: 'POST', headers: page });
    expect(undo.status).toBe(409);
    expect((await post(chat, id, 'x'.repeat(20_001))).body.error).toBe('Your message has 20001 characters; the limit is 20000.');
    expect(((await fetch(`${chat.url}api/conversations/nope`)).status)).toBe(404);
  });

  it('Undo takes the last exchange out of the page and out of the model history', async () => {
    const id = await newConversation(chat);
    await post(chat, id, 'first question');
    await waitForEntries(chat, id, 2);
    await post(chat, id, 'second question');
    await waitForEntries(chat, id, 4);
    const key = `web:local:${id}:-`;
    expect(chat.history.turns(key).map((t) => t.text)).toEqual(['first question', 'You said: first question (0 image(s) so far)', 'second question', 'You said: second question (0 image(s) so far)']);
    expect((await fetch(`${chat.url}api/conversations/${id}/undo`, { method: 'POST', headers: page })).status).toBe(200);
    expect(chat.history.turns(key).map((t) => t.text)).toEqual(['first question', 'You said: first question (0 image(s) so far)']);
    const left = await waitForEntries(chat, id, 2);
    expect(left.map((e) => e.segments[0]?.text)).toEqual(['first question', 'You said: first question (0 image(s) so far)']);
  });

  it('shows, changes and restores settings through the slash syntax', async () => {
    const id = await newConversation(chat);
    await post(chat, id, '/settings words=20 temperature=0.5');
    await post(chat, id, '/settings reset');
    const entries = await waitForEntries(chat, id, 4);
    const notices = entries.filter((e) => e.role === 'bot').map((e) => e.segments[0]?.text ?? '');
    expect(notices[0]).toContain('words=20 temperature=0.5');
    expect(notices[1]).toContain('words=32 temperature=0');
  });

  it('refuses Undo while an answer is being written, then allows it', async () => {
    const id = await newConversation(chat);
    const release = engine.hold();
    try {
      expect((await post(chat, id, 'slow one')).status).toBe(202);
      const early = await fetch(`${chat.url}api/conversations/${id}/undo`, { method: 'POST', headers: page });
      expect(early.status).toBe(409);
      expect(((await early.json()) as { error: string }).error).toBe('An answer is still being written here; undo once it is done.');
    } finally {
      release();
    }
    await waitForEntries(chat, id, 2);
    expect((await fetch(`${chat.url}api/conversations/${id}/undo`, { method: 'POST', headers: page })).status).toBe(200);
    expect(await waitForEntries(chat, id, 0)).toEqual([]);
  });

  it('deletes a conversation: gone from the list, forgotten by the model, its images dropped', async () => {
    const id = await newConversation(chat);
    await post(chat, id, 'remember me', [{ name: 'only-here.png', data: await pngImage(9, 9, [1, 2, 3]) }]);
    const [user] = await waitForEntries(chat, id, 2);
    const hash = (user.segments[1] as unknown as { images: { hash: string }[] }).images[0].hash;
    expect((await fetch(`${chat.url}api/images/${hash}`)).status).toBe(200);
    expect(chat.history.turns(`web:local:${id}:-`)).toHaveLength(2);
    const res = await fetch(`${chat.url}api/conversations/${id}`, { method: 'DELETE', headers: page });
    expect(res.status).toBe(200);
    expect(chat.history.turns(`web:local:${id}:-`)).toEqual([]);
    expect((await fetch(`${chat.url}api/conversations/${id}`)).status).toBe(404);
    expect((await fetch(`${chat.url}api/images/${hash}`)).status).toBe(404);
    const list = (await (await fetch(`${chat.url}api/conversations`)).json()) as { conversations: { id: string }[] };
    expect(list.conversations.map((c) => c.id)).not.toContain(id);
    expect((await fetch(`${chat.url}api/conversations/${id}`, { method: 'DELETE' })).status).toBe(403);
  });

  it('saves a conversation as one HTML file with its images inline and every text escaped', async () => {
    const id = await newConversation(chat);
    await post(chat, id, '<img src=x onerror=alert(1)> look', [{ name: '"><script>.png', data: await pngImage(8, 8) }]);
    await waitForEntries(chat, id, 2);
    await post(chat, id, 'pictures please');
    await waitForEntries(chat, id, 4);
    const res = await fetch(`${chat.url}api/conversations/${id}/export`);
    expect(res.headers.get('content-disposition')).toMatch(/^attachment; filename="fromage-conversation-\d{4}-\d\d-\d\d\.html"$/);
    const html = await res.text();
    expect(html).toContain("content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\"");
    expect(html).toContain('&lt;img src=x onerror=alert(1)&gt; look');
    expect(html).toContain('a &lt;b&gt;cat&lt;/b&gt; &amp; &quot;dog&quot;');
    expect(html).toMatch(/<img src="data:image\/png;base64,[A-Za-z0-9+/=]+" alt="&quot;&gt;&lt;script&gt;.png">/);
    expect(html).not.toContain('<script');
    expect(html).not.toContain('src="/api/');
  });

  it('serves stored images by hash only, with the type their bytes show', async () => {
    expect((await fetch(`${chat.url}api/images/..%2F..%2Fetc%2Fpasswd`)).status).toBe(404);
    expect((await fetch(`${chat.url}api/images/${'0'.repeat(64)}`)).status).toBe(404);
    const image = await replyImage('x.png', 'https://a.example/x.png', 1);
    expect(image.data.subarray(1, 4).toString()).toBe('PNG');
  });
});

describe('web chat with a token', () => {
  let chat: WebChat;
  beforeAll(async () => {
    chat = await startWebChat({ engine: new ScriptedEngine(() => undefined), token: TOKEN, host: '127.0.0.1' });
  });
  afterAll(() => chat.close());

  it('sends the page to the login form and the API answers 401 naming the token', async () => {
    const res = await fetch(chat.url, { redirect: 'manual' });
    expect(res.status).toBe(303);
    expect(res.headers.get('location')).toBe('/login');
    expect((await fetch(`${chat.url}login`)).status).toBe(200);
    const api = await fetch(`${chat.url}api/conversations`);
    expect(api.status).toBe(401);
    expect(((await api.json()) as { error: string }).error).toContain('Authorization: Bearer');
    expect((await fetch(`${chat.url}api/conversations`, { headers: { authorization: 'Bearer wrong-token-0123456789' } })).status).toBe(401);
  });

  it('accepts a bearer token (API clients) and the session cookie the login sets', async () => {
    const bearer = { authorization: `Bearer ${TOKEN}` };
    expect((await fetch(`${chat.url}api/conversations`, { headers: bearer })).status).toBe(200);
    // Bearer requests cannot be forged by another site, so they need no page header.
    expect((await fetch(`${chat.url}api/conversations`, { method: 'POST', headers: bearer })).status).toBe(201);
    const wrong = await fetch(`${chat.url}api/login`, { method: 'POST', headers: { ...page, 'content-type': 'application/json' }, body: JSON.stringify({ token: 'nope' }) });
    expect(wrong.status).toBe(401);
    expect(((await wrong.json()) as { error: string }).error).toContain('FROMAGE_WEB_TOKEN');
    const login = await fetch(`${chat.url}api/login`, { method: 'POST', headers: { ...page, 'content-type': 'application/json' }, body: JSON.stringify({ token: TOKEN }) });
    expect(login.status).toBe(200);
    const cookie = login.headers.get('set-cookie') ?? '';
    expect(cookie).toContain(`fromage_web=${sessionValue(TOKEN)}`);
    expect(cookie).toMatch(/HttpOnly/);
    expect(cookie).toMatch(/SameSite=Strict/);
    const session = { cookie: cookie.split(';')[0] };
    expect((await fetch(`${chat.url}api/conversations`, { headers: session })).status).toBe(200);
    // A cookie alone does not make a state change: the page header is still needed.
    expect((await fetch(`${chat.url}api/conversations`, { method: 'POST', headers: session })).status).toBe(403);
    expect((await fetch(`${chat.url}api/conversations`, { method: 'POST', headers: { ...session, ...page } })).status).toBe(201);
  });

  it('answers under any host name once a token is set (behind a reverse proxy)', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(`${chat.url}api/conversations`, { headers: { host: 'chat.intranet.example', authorization: `Bearer ${TOKEN}` } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(200);
  });
});
