/**
 * The Discord adapter end to end: a real discord.js client against the fake Discord on
 * 127.0.0.1 (REST, gateway, CDN), with a handler double in place of the service.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { conversationId } from '../../src/conversation/key.ts';
import type { RecordedRequest } from './fake-discord/server.ts';
import {
  ADMIN,
  ALICE,
  APP_ID,
  BOT_USER,
  MANAGER_PERMISSIONS,
  OTHER_BOT,
  attachment,
  interactionPayload,
  messagePayload,
  type AttachmentPayload,
  type InteractionSpec,
} from './fake-discord/payloads.ts';
import { BOT_ROLE, CHANNEL_IDS, GUILD, SETTINGS_ROLE, THREAD, THREAD_PARENT, startHarness, type Harness } from './harness.ts';
import { decodingHandlerDouble, noisyPng, replyImage, solidPng } from './images.ts';

let h: Harness;
let red: Buffer;
let green: Buffer;
let blue: Buffer;
let channelCounter = 1;

/** Each test gets its own channel so recorded requests never mix. */
function freshChannel(): string {
  return CHANNEL_IDS[channelCounter++];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function mention(channelId: string, text: string, more: Partial<Parameters<typeof messagePayload>[0]> = {}) {
  const payload = messagePayload({
    channelId,
    guildId: GUILD,
    author: ALICE,
    content: `<@${BOT_USER.id}> ${text}`,
    mentions: [BOT_USER],
    ...more,
  });
  h.fake.dispatch('MESSAGE_CREATE', payload);
  return payload;
}

function command(spec: Omit<InteractionSpec, 'user' | 'guildId' | 'channel'> & Partial<InteractionSpec>) {
  const payload = interactionPayload({ guildId: GUILD, channel: { id: spec.channel?.id ?? freshChannel(), type: 0 }, user: ALICE, ...spec });
  h.fake.dispatch('INTERACTION_CREATE', payload);
  return payload;
}

function png(name: string, data: Buffer): AttachmentPayload {
  return attachment(h.fake.addCdnFile(name, data, 'image/png'), name, data.length, 'image/png');
}

const posts = (channelId: string) => (r: RecordedRequest) => r.method === 'POST' && r.path === `/channels/${channelId}/messages`;

/** Waits until `count` requests match, then returns them. */
async function waitForCount(pred: (r: RecordedRequest) => boolean, count: number, timeoutMs = 5000): Promise<RecordedRequest[]> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const found = h.fake.requests.filter(pred);
    if (found.length >= count) return found;
    await sleep(20);
  }
  throw new Error(`expected ${count} matching requests, saw ${h.fake.requests.filter(pred).length}`);
}

beforeAll(async () => {
  [red, green, blue] = await Promise.all([solidPng(255, 0, 0), solidPng(0, 255, 0), solidPng(0, 0, 255)]);
  h = await startHarness({ DISCORD_SETTINGS_ROLE: SETTINGS_ROLE });
});

afterAll(async () => {
  await h?.close();
});

beforeEach(() => {
  h.setHandler(decodingHandlerDouble);
});

describe('connection', () => {
  test('finds the gateway through GET /gateway/bot under DISCORD_API_BASE and speaks plain JSON v10', async () => {
    expect(h.fake.requests.some((r) => r.method === 'GET' && r.path === '/gateway/bot')).toBe(true);
    const conn = h.fake.connections[0];
    expect(conn.query.get('v')).toBe('10');
    expect(conn.query.get('encoding')).toBe('json');
    expect(conn.query.has('compress')).toBe(false);
    expect(conn.identify?.compress).toBe(false);
    expect(conn.identify?.token).toBe('fake-token-for-tests');
    // Guilds | GuildMessages | DirectMessages | MessageContent
    expect(conn.identify?.intents).toBe(1 | (1 << 9) | (1 << 12) | (1 << 15));
    const deadline = Date.now() + 3000;
    while (conn.heartbeats === 0 && Date.now() < deadline) await sleep(50);
    expect(conn.heartbeats).toBeGreaterThan(0);
  });
});

describe('messages', () => {
  test('a mention with an image reaches the handler with the mention stripped and the image downloaded', async () => {
    const channel = freshChannel();
    const next = h.nextMessage();
    const sent = mention(channel, 'what is in this picture?', { attachments: [png('red.png', red)] });
    const message = await next;
    expect(message.text).toBe('what is in this picture?');
    expect(message.id).toBe(sent.id);
    expect(message.key).toEqual({ platform: 'discord', workspace: GUILD, channel });
    expect(message.author).toEqual({ id: ALICE.id, name: 'alice' });
    expect(message.intent).toEqual({ kind: 'chat' });
    expect(message.images).toHaveLength(1);
    expect(message.images[0].contentType).toBe('image/png');
    expect(await message.images[0].fetch(1 << 20)).toEqual(red);
    await expect(message.images[0].fetch(10)).rejects.toMatchObject({ reason: 'too-large' });
  });

  test('a slow image download does not let the text sent next overtake it (issue 11, bug 1)', async () => {
    const channel = freshChannel();
    const order: string[] = [];
    h.setHandler(async (m) => void order.push(m.text));
    const slow = attachment(h.fake.addCdnFile('landscape.png', red, 'image/png', 300), 'landscape.png', red.length, 'image/png');
    mention(channel, 'FIRST with image', { attachments: [slow] });
    await sleep(30);
    mention(channel, 'SECOND');
    mention(channel, 'THIRD');
    const deadline = Date.now() + 5000;
    while (order.length < 3 && Date.now() < deadline) await sleep(20);
    expect(order).toEqual(['FIRST with image', 'SECOND', 'THIRD']);
  });

  test('the reply keeps text and images in the model order, as attachments, never pinging anyone', async () => {
    const channel = freshChannel();
    h.setHandler(async (_m, r) =>
      r.send({
        kind: 'answer',
        segments: [
          { type: 'text', text: 'Here is a red one:' },
          { type: 'images', images: [replyImage(red, 'red.png')] },
          { type: 'text', text: 'and green and blue:' },
          { type: 'images', images: [replyImage(green, 'green.png'), replyImage(blue, 'blue.png')] },
        ],
      }),
    );
    const sent = mention(channel, 'show me colours');
    const [first, second] = await waitForCount(posts(channel), 2);
    expect(first.multipart).toBe(true);
    expect(first.body?.content).toBe('Here is a red one:');
    expect(first.body?.message_reference).toMatchObject({ message_id: sent.id });
    expect(first.body?.allowed_mentions).toEqual({ parse: [], replied_user: false });
    expect(first.files.map((f) => f.filename)).toEqual(['red.png']);
    expect(first.files[0].data).toEqual(red);
    expect(second.body?.content).toBe('and green and blue:');
    expect(second.body?.message_reference).toBeUndefined();
    expect(second.body?.allowed_mentions).toEqual({ parse: [], replied_user: false });
    expect(second.files.map((f) => f.filename)).toEqual(['green.png', 'blue.png']);
    expect(second.files.map((f) => f.data)).toEqual([green, blue]);
    expect((second.body?.attachments as { id: string }[]).map((a) => a.id)).toEqual(['0', '1']);
  });

  test('long answers are split at 2000 characters on word boundaries', async () => {
    const channel = freshChannel();
    const words = Array.from({ length: 900 }, (_, i) => `word${i}`).join(' ');
    h.setHandler(async (_m, r) => r.send({ kind: 'answer', segments: [{ type: 'text', text: words }] }));
    mention(channel, 'talk a lot');
    const sent = await waitForCount(posts(channel), 4);
    const contents = sent.map((r) => String(r.body?.content));
    for (const c of contents) expect(c.length).toBeLessThanOrEqual(2000);
    expect(contents.join(' ')).toBe(words);
  });

  test('a DM is answered without a mention and keyed as a DM conversation', async () => {
    const dm = '1100000000000000900';
    const next = h.nextMessage();
    h.fake.dispatch('MESSAGE_CREATE', messagePayload({ channelId: dm, author: ALICE, content: 'hello in private' }));
    const message = await next;
    expect(message.text).toBe('hello in private');
    expect(message.key).toEqual({ platform: 'discord', workspace: 'dm', channel: dm });
    const reply = await h.fake.waitForRequest(posts(dm));
    expect(reply.body?.content).toBe('saw 0 image(s): hello in private');
  });

  test('a thread is its own conversation, apart from its parent channel', async () => {
    let next = h.nextMessage();
    mention(THREAD, 'in the thread', { channelType: 11 });
    const inThread = await next;
    next = h.nextMessage();
    mention(THREAD_PARENT, 'in the channel');
    const inChannel = await next;
    expect(inThread.key).toEqual({ platform: 'discord', workspace: GUILD, channel: THREAD_PARENT, thread: THREAD });
    expect(inChannel.key).toEqual({ platform: 'discord', workspace: GUILD, channel: THREAD_PARENT });
    expect(conversationId(inThread.key)).not.toBe(conversationId(inChannel.key));
    await h.fake.waitForRequest(posts(THREAD));
  });

  test('ignores its own messages and other bots, answers people', async () => {
    const channel = freshChannel();
    const before = h.received.length;
    const next = h.nextMessage();
    h.fake.dispatch('MESSAGE_CREATE', messagePayload({ channelId: channel, guildId: GUILD, author: BOT_USER, content: `<@${BOT_USER.id}> me`, mentions: [BOT_USER] }));
    h.fake.dispatch('MESSAGE_CREATE', messagePayload({ channelId: channel, guildId: GUILD, author: OTHER_BOT, content: `<@${BOT_USER.id}> bot`, mentions: [BOT_USER] }));
    mention(channel, 'a person');
    const message = await next;
    expect(message.text).toBe('a person');
    await h.fake.waitForRequest(posts(channel));
    expect(h.received.length - before).toBe(1);
    expect(h.fake.requests.filter(posts(channel))).toHaveLength(1);
  });

  test('answers a reply to its own message without a mention, and a mention of its managed role', async () => {
    const channel = freshChannel();
    let next = h.nextMessage();
    h.fake.dispatch(
      'MESSAGE_CREATE',
      messagePayload({ channelId: channel, guildId: GUILD, author: ALICE, content: 'and then?', replyTo: { id: '1300000000000999999', author: BOT_USER } }),
    );
    const reply = await next;
    expect(reply.text).toBe('and then?');
    expect(reply.replyTo).toBe('1300000000000999999');
    next = h.nextMessage();
    h.fake.dispatch('MESSAGE_CREATE', messagePayload({ channelId: channel, guildId: GUILD, author: ALICE, content: `<@&${BOT_ROLE}> via the role`, mentionRoles: [BOT_ROLE] }));
    expect((await next).text).toBe('via the role');
  });

  test('other mentions become readable names; a bare mention gets a hint instead of silence', async () => {
    const channel = freshChannel();
    const next = h.nextMessage();
    mention(channel, `say hi to <@${ADMIN.id}>`, { mentions: [BOT_USER, ADMIN] });
    expect((await next).text).toBe('say hi to @admin');
    const before = h.received.length;
    mention(channel, '');
    const [, hint] = await waitForCount(posts(channel), 2);
    expect(hint.body?.content).toMatch(/^Mention me with a question or an image, or use `\/fromage help`/);
    expect(h.received.length).toBe(before);
  });

  test('an image link unfurled by Discord is read through the media proxy', async () => {
    const channel = freshChannel();
    const proxied = h.fake.addCdnFile('cat.png', green, 'image/png');
    const next = h.nextMessage();
    const payload = messagePayload({ channelId: channel, guildId: GUILD, author: ALICE, content: `<@${BOT_USER.id}> this one https://example.invalid/cat.png`, mentions: [BOT_USER] });
    payload.embeds = [{ type: 'image', url: 'https://example.invalid/cat.png', thumbnail: { url: 'https://example.invalid/cat.png', proxy_url: proxied, width: 16, height: 16 } }];
    h.fake.dispatch('MESSAGE_CREATE', payload);
    const message = await next;
    expect(message.images).toHaveLength(1);
    expect(await message.images[0].fetch(1 << 20)).toEqual(green);
  });

  test('messages that do not address the bot are ignored', async () => {
    const channel = freshChannel();
    const before = h.received.length;
    h.fake.dispatch('MESSAGE_CREATE', messagePayload({ channelId: channel, guildId: GUILD, author: ALICE, content: 'just chatting' }));
    const next = h.nextMessage();
    mention(channel, 'now you');
    expect((await next).text).toBe('now you');
    expect(h.received.length - before).toBe(1);
  });
});

describe('image checks', () => {
  test('a non-image attachment is skipped with a clear notice; the text still goes through', async () => {
    const channel = freshChannel();
    const pdf = Buffer.from('%PDF-1.4 not an image');
    const next = h.nextMessage();
    mention(channel, 'read this', { attachments: [attachment(h.fake.addCdnFile('report.pdf', pdf, 'application/pdf'), 'report.pdf', pdf.length, 'application/pdf')] });
    const message = await next;
    expect(message.images).toHaveLength(0);
    expect(message.text).toBe('read this');
    const [notice] = await waitForCount(posts(channel), 2);
    expect(notice.body?.content).toMatch(/Skipped report\.pdf: it is not an image \(application\/pdf\)/);
  });

  test('an attachment over FROMAGE_MAX_IMAGE_BYTES is refused before download', async () => {
    const channel = freshChannel();
    const before = h.received.length;
    const big = attachment(h.fake.addCdnFile('huge.png', red, 'image/png'), 'huge.png', 5 * 1024 * 1024, 'image/png');
    mention(channel, '', { attachments: [big] });
    const notice = await h.fake.waitForRequest(posts(channel));
    expect(notice.body?.content).toMatch(/Skipped huge\.png: it is 5\.0 MiB, over the 64\.0 KiB limit per image/);
    await sleep(200);
    expect(h.received.length).toBe(before);
    expect(h.fake.requests.filter(posts(channel))).toHaveLength(1);
  });

  test('an image whose bytes are larger than it claimed is cut off while downloading', async () => {
    const channel = freshChannel();
    const liar = Buffer.concat([red, Buffer.alloc(100 * 1024)]);
    mention(channel, 'tiny, I promise', { attachments: [attachment(h.fake.addCdnFile('liar.png', liar, 'image/png'), 'liar.png', 1000, 'image/png')] });
    const [notice] = await waitForCount(posts(channel), 2);
    expect(notice.body?.content).toMatch(/Skipped liar\.png: .*over the 64\.0 KiB limit/);
  });

  test('a corrupt image gets the handler error as a reply', async () => {
    const channel = freshChannel();
    const garbage = Buffer.from('this is not really a png at all');
    mention(channel, 'look', { attachments: [png('broken.png', garbage)] });
    const reply = await h.fake.waitForRequest(posts(channel));
    expect(reply.body?.content).toBe('I could not read broken.png: it is not a valid PNG, JPEG or WebP image.');
  });

  test('11 images: the first FROMAGE_MAX_IMAGES_PER_MESSAGE are read and the user is told', async () => {
    const channel = freshChannel();
    const next = h.nextMessage();
    mention(channel, 'many', { attachments: Array.from({ length: 11 }, (_, i) => png(`img${i}.png`, i % 2 ? green : red)) });
    const message = await next;
    expect(message.images.map((i) => i.name)).toEqual(['img0.png', 'img1.png', 'img2.png', 'img3.png']);
    const [notice, answer] = await waitForCount(posts(channel), 2);
    expect(notice.body?.content).toBe('You sent 11 images; I read only the first 4 (the limit per message).');
    expect(answer.body?.content).toBe('saw 4 image(s): many');
  });
});

describe('progress', () => {
  test('the queue position message is edited (at most once a second) and then replaced by the answer', async () => {
    const channel = freshChannel();
    h.setHandler(async (_m, r) => {
      await r.progress({ state: 'queued', position: 3, etaSeconds: 30 });
      await r.progress({ state: 'queued', position: 2, etaSeconds: 20 });
      await r.progress({ state: 'queued', position: 1, etaSeconds: 10 });
      await sleep(1500);
      await r.progress({ state: 'running' });
      await sleep(1400);
      await r.send({ kind: 'answer', segments: [{ type: 'text', text: 'done' }, { type: 'images', images: [replyImage(blue, 'blue.png')] }] });
    });
    mention(channel, 'busy?');
    const created = await h.fake.waitForRequest(posts(channel));
    expect(created.body?.content).toBe('⏳ You are number 3 in the queue (about 30 s).');
    const edits = await waitForCount((r) => r.method === 'PATCH' && r.path.startsWith(`/channels/${channel}/messages/`), 3, 5000);
    // Position 2 was superseded within the second: only the latest value is shown.
    expect(edits.map((e) => e.body?.content)).toEqual(['⏳ You are next in the queue (about 10 s).', '⚙️ Working on it…', 'done']);
    expect(edits[2].files.map((f) => f.filename)).toEqual(['blue.png']);
    expect(new Set(edits.map((e) => e.path)).size).toBe(1);
    expect(h.fake.requests.filter(posts(channel))).toHaveLength(1);
  });

  test('typing is renewed while the job runs and stops with the answer', async () => {
    const channel = freshChannel();
    const typing = (r: RecordedRequest) => r.path === `/channels/${channel}/typing`;
    h.setHandler(async (_m, r) => {
      await r.typing();
      await sleep(700);
      await r.send({ kind: 'answer', segments: [{ type: 'text', text: 'ok' }] });
    });
    mention(channel, 'think hard');
    await h.fake.waitForRequest(posts(channel));
    await sleep(100); // a typing call already on the wire may still land
    const count = h.fake.requests.filter(typing).length;
    expect(count).toBeGreaterThanOrEqual(3);
    await sleep(500);
    expect(h.fake.requests.filter(typing).length).toBe(count);
  });
});

describe('failures', () => {
  test('without Attach Files the text still arrives, with a note', async () => {
    const channel = freshChannel();
    h.fake.noAttachChannels.add(channel);
    h.setHandler(async (_m, r) => r.send({ kind: 'answer', segments: [{ type: 'text', text: 'look:' }, { type: 'images', images: [replyImage(red, 'red.png')] }] }));
    mention(channel, 'show');
    const [refused, fallback] = await waitForCount(posts(channel), 2);
    expect(refused.files).toHaveLength(1);
    expect(fallback.files).toHaveLength(0);
    expect(fallback.body?.content).toBe('look:\n(I could not attach 1 image: the bot needs the Attach Files permission in this channel.)');
  });

  test('a deleted channel is logged once and does not crash the bot', async () => {
    const channel = freshChannel();
    h.fake.deletedChannels.add(channel);
    let sent = false;
    h.setHandler(async (_m, r) => {
      await r.typing();
      await r.send({ kind: 'answer', segments: [{ type: 'text', text: 'nobody will see this' }] });
      await r.send({ kind: 'answer', segments: [{ type: 'text', text: 'nor this' }] });
      sent = true;
    });
    mention(channel, 'hello?');
    while (!sent) await sleep(20);
    const logged = h.logLines.filter((l) => l.includes('unknown-channel') && l.includes(channel));
    expect(logged).toHaveLength(1);
    // Still alive: the next message elsewhere is answered.
    h.setHandler(decodingHandlerDouble);
    const other = freshChannel();
    mention(other, 'still there?');
    await h.fake.waitForRequest(posts(other));
  });

  test('a message from a channel missing from the cache is still answered', async () => {
    const stray = '1100000000000009999';
    const next = h.nextMessage();
    mention(stray, 'from nowhere');
    expect((await next).key).toEqual({ platform: 'discord', workspace: GUILD, channel: stray });
    await h.fake.waitForRequest(posts(stray));
  });

  test('a REST rate limit (429) is waited out by discord.js, not retried by hand', async () => {
    const channel = freshChannel();
    h.fake.rateLimitOnce('POST', `/channels/${channel}/messages`);
    mention(channel, 'hurry');
    const [limited, sent] = await waitForCount(posts(channel), 2);
    expect(limited.body?.content).toBe('saw 0 image(s): hurry');
    expect(sent.body?.content).toBe('saw 0 image(s): hurry');
    await sleep(300);
    expect(h.fake.requests.filter(posts(channel))).toHaveLength(2);
  });

  test('after the gateway drops, the client resumes and keeps answering', async () => {
    const before = h.fake.connections.length;
    h.fake.dropConnections(4000);
    const deadline = Date.now() + 8000;
    while (!h.fake.connections[before]?.resume && Date.now() < deadline) await sleep(20);
    expect(h.fake.connections[before]?.resume).toMatchObject({ session_id: 'fake-session' });
    await sleep(50);
    const channel = freshChannel();
    const next = h.nextMessage();
    mention(channel, 'back?');
    expect((await next).text).toBe('back?');
  });

  test('a handler that throws yields an apology, not a crash', async () => {
    const channel = freshChannel();
    h.setHandler(async () => {
      throw new Error('boom');
    });
    mention(channel, 'break');
    const reply = await h.fake.waitForRequest(posts(channel));
    expect(reply.body?.content).toBe('Something went wrong on my side while answering. Please try again later.');
    expect(h.logLines.some((l) => l.includes('handler failed') && l.includes('boom'))).toBe(true);
  });
});

describe('/fromage', () => {
  const callback = (payload: { id: string }) => (r: RecordedRequest) => r.method === 'POST' && r.path.startsWith(`/interactions/${payload.id}/`);
  const original = (payload: { token: string }) => (r: RecordedRequest) =>
    r.method === 'PATCH' && r.path === `/webhooks/${APP_ID}/${payload.token}/messages/@original`;
  const followUps = (payload: { token: string }) => (r: RecordedRequest) => r.method === 'POST' && r.path === `/webhooks/${APP_ID}/${payload.token}`;

  test('retrieve is deferred (type 5), then the original response is edited into the images', async () => {
    h.setHandler(async (m, r) =>
      r.send({
        kind: 'answer',
        segments: [{ type: 'images', images: [replyImage(red, 'cat-1.png'), replyImage(green, 'cat-2.png')] }],
      }),
    );
    const next = h.nextMessage();
    const payload = command({ subcommand: 'retrieve', options: [{ name: 'query', type: 3, value: 'a cat on a sofa' }, { name: 'count', type: 4, value: 2 }] });
    const message = await next;
    expect(message.intent).toEqual({ kind: 'retrieve', query: 'a cat on a sofa', count: 2 });
    expect(message.id).toBe(payload.id);
    const cb = await h.fake.waitForRequest(callback(payload));
    expect(cb.body).toMatchObject({ type: 5 });
    const edit = await h.fake.waitForRequest(original(payload));
    expect(edit.files.map((f) => f.filename)).toEqual(['cat-1.png', 'cat-2.png']);
    expect(edit.files.map((f) => f.data)).toEqual([red, green]);
    expect(edit.body?.allowed_mentions).toEqual({ parse: [], replied_user: false });
  });

  test('ask carries its attachment option as an image; big answers are re-encoded under attachment_size_limit', async () => {
    const big = await noisyPng(300);
    const limit = 40 * 1024;
    expect(big.length).toBeGreaterThan(limit);
    h.setHandler(async (_m, r) => r.send({ kind: 'answer', segments: [{ type: 'text', text: 'a big one' }, { type: 'images', images: [replyImage(big, 'big.png')] }] }));
    const file = png('photo.png', blue);
    const next = h.nextMessage();
    const payload = command({
      subcommand: 'ask',
      options: [{ name: 'prompt', type: 3, value: 'what colour?' }, { name: 'image', type: 11, value: file.id }],
      attachments: [file],
      attachmentSizeLimit: limit,
    });
    const message = await next;
    expect(message.text).toBe('what colour?');
    expect(message.intent).toEqual({ kind: 'chat' });
    expect(await message.images[0].fetch(1 << 20)).toEqual(blue);
    const edit = await h.fake.waitForRequest(original(payload));
    expect(edit.body?.content).toBe('a big one');
    expect(edit.files).toHaveLength(1);
    expect(edit.files[0].filename).toBe('big.jpg');
    expect(edit.files[0].data.length).toBeLessThanOrEqual(limit);
    expect(edit.files[0].data.subarray(0, 3)).toEqual(Buffer.from([0xff, 0xd8, 0xff]));
  });

  test('ask with a non-image attachment: a private note, and the prompt goes on without it', async () => {
    const pdf = Buffer.from('%PDF-1.4');
    const file = attachment(h.fake.addCdnFile('doc.pdf', pdf, 'application/pdf'), 'doc.pdf', pdf.length, 'application/pdf');
    const next = h.nextMessage();
    const payload = command({ subcommand: 'ask', options: [{ name: 'prompt', type: 3, value: 'summarise' }, { name: 'image', type: 11, value: file.id }], attachments: [file] });
    const message = await next;
    expect(message.images).toHaveLength(0);
    const note = await h.fake.waitForRequest(followUps(payload));
    expect(note.body).toMatchObject({ flags: 64 });
    expect(String(note.body?.content)).toMatch(/Skipped doc\.pdf: it is not an image/);
    expect((await h.fake.waitForRequest(original(payload))).body?.content).toBe('saw 0 image(s): summarise');
  });

  test('answer text streamed while running is shown by editing the response', async () => {
    h.setHandler(async (_m, r) => {
      await r.progress({ state: 'running', text: 'A cat' });
      await r.progress({ state: 'running', text: 'A cat on a' });
      await r.progress({ state: 'running', text: 'A cat on a sofa' });
      await sleep(1500);
      await r.send({ kind: 'answer', segments: [{ type: 'text', text: 'A cat on a sofa.' }] });
    });
    const payload = command({ subcommand: 'ask', options: [{ name: 'prompt', type: 3, value: 'describe' }] });
    const edits = await waitForCount(original(payload), 3, 5000);
    expect(edits.map((e) => e.body?.content)).toEqual(['A cat', 'A cat on a sofa', 'A cat on a sofa.']);
  });

  test('reset reaches the handler as a reset intent for the channel conversation', async () => {
    h.setHandler(async (_m, r) => r.send({ kind: 'notice', segments: [{ type: 'text', text: 'Forgot this conversation.' }] }));
    const channel = freshChannel();
    const next = h.nextMessage();
    const payload = command({ subcommand: 'reset', channel: { id: channel, type: 0 } });
    const message = await next;
    expect(message.intent).toEqual({ kind: 'reset' });
    expect(message.key).toEqual({ platform: 'discord', workspace: GUILD, channel });
    expect((await h.fake.waitForRequest(original(payload))).body?.content).toBe('Forgot this conversation.');
  });

  test('in a thread, a command belongs to the thread conversation', async () => {
    const next = h.nextMessage();
    command({ subcommand: 'help', channel: { id: THREAD, type: 11, parentId: THREAD_PARENT } });
    expect((await next).key).toEqual({ platform: 'discord', workspace: GUILD, channel: THREAD_PARENT, thread: THREAD });
  });

  test('changing settings without Manage Server is refused privately and never reaches the service', async () => {
    const before = h.received.length;
    const payload = command({ subcommand: 'settings', options: [{ name: 'temperature', type: 10, value: 0.7 }] });
    const cb = await h.fake.waitForRequest(callback(payload));
    expect(cb.body).toMatchObject({ type: 4, data: { flags: 64 } });
    expect(String((cb.body?.data as { content: string }).content)).toMatch(/needs the Manage Server permission or the .* role/);
    await sleep(100);
    expect(h.received.length).toBe(before);
  });

  test('settings pass with Manage Server, with the settings role, and for viewing without changes', async () => {
    let next = h.nextMessage();
    command({ subcommand: 'settings', user: ADMIN, permissions: MANAGER_PERMISSIONS, options: [{ name: 'words', type: 4, value: 64 }, { name: 'ret_scale', type: 10, value: 1.5 }] });
    expect((await next).intent).toEqual({ kind: 'settings', changes: { maxWords: 64, retScaleFactor: 1.5 } });
    next = h.nextMessage();
    command({ subcommand: 'settings', roles: [SETTINGS_ROLE], options: [{ name: 'max_images', type: 4, value: 3 }] });
    expect((await next).intent).toEqual({ kind: 'settings', changes: { maxImages: 3 } });
    next = h.nextMessage();
    command({ subcommand: 'settings' });
    expect((await next).intent).toEqual({ kind: 'settings', changes: {} });
    next = h.nextMessage();
    command({ subcommand: 'settings', user: ADMIN, permissions: MANAGER_PERMISSIONS, options: [{ name: 'reset', type: 5, value: true }] });
    expect((await next).intent).toEqual({ kind: 'settings', changes: {}, reset: true });
  });

  test('restoring default settings needs the same permission as changing them', async () => {
    const before = h.received.length;
    const payload = command({ subcommand: 'settings', options: [{ name: 'reset', type: 5, value: true }] });
    const cb = await h.fake.waitForRequest(callback(payload));
    expect(String((cb.body?.data as { content: string }).content)).toMatch(/needs the Manage Server permission/);
    await sleep(100);
    expect(h.received.length).toBe(before);
  });

  test('help is deferred ephemerally; errors replace the public deferral with an ephemeral message', async () => {
    h.setHandler(async (_m, r) => r.send({ kind: 'notice', segments: [{ type: 'text', text: 'How to use me' }] }));
    const help = command({ subcommand: 'help' });
    expect((await h.fake.waitForRequest(callback(help))).body).toMatchObject({ type: 5, data: { flags: 64 } });
    await h.fake.waitForRequest(original(help));

    h.setHandler(async (_m, r) => r.send({ kind: 'error', segments: [{ type: 'text', text: 'The index is not loaded.' }] }));
    const failing = command({ subcommand: 'retrieve', options: [{ name: 'query', type: 3, value: 'dogs' }] });
    const follow = await h.fake.waitForRequest(followUps(failing));
    expect(follow.body).toMatchObject({ content: 'The index is not loaded.', flags: 64 });
    expect(h.fake.requests.some((r) => r.method === 'DELETE' && r.path === `/webhooks/${APP_ID}/${failing.token}/messages/@original`)).toBe(true);
  });

  test('queue progress edits the deferred response, then the answer replaces it', async () => {
    h.setHandler(async (_m, r) => {
      await r.progress({ state: 'queued', position: 2, etaSeconds: 90 });
      await sleep(50);
      await r.send({ kind: 'answer', segments: [{ type: 'text', text: 'answer' }] });
    });
    const payload = command({ subcommand: 'ask', options: [{ name: 'prompt', type: 3, value: 'hi' }] });
    const edits = await waitForCount(original(payload), 2);
    expect(edits.map((e) => e.body?.content)).toEqual(['⏳ You are number 2 in the queue (about 2 min).', 'answer']);
  });

  test('an expired interaction (10062) is logged and does not crash the bot', async () => {
    const before = h.received.length;
    const token = 'expired-token';
    h.fake.expiredTokens.add(token);
    const payload = command({ subcommand: 'ask', token, options: [{ name: 'prompt', type: 3, value: 'too late' }] });
    await h.fake.waitForRequest(callback(payload));
    const deadline = Date.now() + 3000;
    while (!h.logLines.some((l) => l.includes('expired-interaction')) && Date.now() < deadline) await sleep(20);
    expect(h.logLines.some((l) => l.includes('expired-interaction') && l.includes('10062'))).toBe(true);
    expect(h.received.length).toBe(before);
    const channel = freshChannel();
    mention(channel, 'alive?');
    await h.fake.waitForRequest(posts(channel));
  });

  test('in a DM, commands work and the conversation is the DM', async () => {
    const dm = '1100000000000000901';
    const next = h.nextMessage();
    const payload = interactionPayload({ channel: { id: dm, type: 1 }, user: ALICE, subcommand: 'settings', options: [{ name: 'temperature', type: 10, value: 1 }] });
    h.fake.dispatch('INTERACTION_CREATE', payload);
    const message = await next;
    expect(message.key).toEqual({ platform: 'discord', workspace: 'dm', channel: dm });
    expect(message.intent).toEqual({ kind: 'settings', changes: { temperature: 1 } });
  });
});
