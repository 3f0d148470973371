import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { IncomingMessage } from '../../src/conversation/types.ts';
import type { SlackAdapter } from '../../adapters/slack/index.ts';
import { BOT_TOKEN, FakeSlack, ForeignHost } from './fake-slack.ts';
import { JPEG, PNG, MAX_IMAGE_BYTES, eventEnvelope, eventually, handlerDouble, postCommand, postEvent, startHttpAdapter } from './harness.ts';

const fake = new FakeSlack();
const foreign = new ForeignHost();
let adapter: SlackAdapter;
let received: IncomingMessage[];
let fetched: Buffer[];

beforeAll(async () => {
  await fake.start();
  await foreign.start();
});
afterAll(async () => {
  await fake.stop();
  await foreign.stop();
});
beforeEach(async () => {
  received = [];
  fetched = [];
  fake.messages.length = 0;
  fake.calls.length = 0;
  fake.fileRequests.length = 0;
  fake.failures.clear();
  foreign.requests.length = 0;
  adapter = await startHttpAdapter(fake, handlerDouble(received, fetched));
});
afterEach(async () => {
  await adapter.stop();
});

function file(id: string, name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { id, name, mimetype: 'image/png', filetype: 'png', size: PNG.length, mode: 'hosted', url_private_download: `${fake.base}/files/${id}/${name}`, ...extra };
}

function mention(ts: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { type: 'app_mention', user: 'U1', text: '<@UBOT> what is in this picture?', ts, channel: 'C1', team: 'T1', event_ts: ts, ...extra };
}

async function deliver(event: Record<string, unknown>, count = 1): Promise<void> {
  const before = received.length;
  const res = await postEvent(adapter.httpPort ?? 0, eventEnvelope(event));
  expect(res.status).toBe(200);
  await eventually(() => received.length >= before + count);
  await adapter.idle();
}

/** What a user sees in the thread, in order: message texts, and file uploads as [files: ...]. */
function threadTexts(channel: string, thread?: string): string[] {
  return fake.thread(channel, thread).map((m) => m.text ?? `[files: ${(m.files ?? []).join(', ')}]`);
}

describe('Slack adapter over HTTP (signed requests, fake Web API)', () => {
  it('answers a mention with an image in its thread: text, then files in model order, replacing the status message', async () => {
    fake.files.set('/files/F100/cat.png', { headers: { 'content-type': 'image/png' }, body: PNG });
    await deliver(mention('1.0001', { files: [file('F100', 'cat.png')] }));

    const message = received[0];
    expect(message.key).toEqual({ platform: 'slack', workspace: 'T1', channel: 'C1', thread: '1.0001' });
    expect(message.text).toBe('what is in this picture?');
    expect(message.intent).toEqual({ kind: 'chat' });
    expect(message.images.map((i) => i.name)).toEqual(['cat.png']);
    expect(fetched).toEqual([PNG]);
    expect(fake.fileRequests).toEqual([{ path: '/files/F100/cat.png', authorization: `Bearer ${BOT_TOKEN}` }]);

    expect(threadTexts('C1', '1.0001')).toEqual(['I see &lt;a cat&gt; &amp; a dog', '[files: first.png, second.png]', 'Anything else?']);
    // The status message was posted once, then became the answer's first text.
    const posts = fake.callsTo('chat.postMessage');
    expect(posts[0].args.text).toContain('Thinking');
    expect(fake.callsTo('chat.update').at(-1)?.args.text).toBe('I see &lt;a cat&gt; &amp; a dog');
    expect(fake.callsTo('files.completeUploadExternal')[0].args.thread_ts).toBe('1.0001');
    // Status edits are throttled: three progress calls within 1.2 s, no edit before the answer.
    expect(fake.callsTo('chat.update')).toHaveLength(1);
  });

  it('edits the status message at most once per 1.2 s, then replaces it with the answer', async () => {
    await deliver(mention('1.2', { text: '<@UBOT> slow progress' }));
    const post = fake.callsTo('chat.postMessage')[0];
    const updates = fake.callsTo('chat.update');
    expect(post.args.text).toContain('Thinking');
    expect(updates.map((u) => u.args.text)).toEqual([':thought_balloon: Looking at your image…', 'I see &lt;a cat&gt; &amp; a dog']);
    expect(updates[0].at - post.at).toBeGreaterThanOrEqual(1150);
  });

  it('keeps a thread reply in the thread and its conversation', async () => {
    await deliver(mention('2.0002', { thread_ts: '1.5000', text: 'and <@UBOT> what now? <https://x.org|link>' }));
    expect(received[0].key.thread).toBe('1.5000');
    expect(received[0].text).toBe('and what now? link (https://x.org)');
    expect(threadTexts('C1', '1.5000')).toHaveLength(3);
  });

  it('answers a DM in the DM, as one conversation', async () => {
    await deliver({ type: 'message', channel_type: 'im', channel: 'D1', user: 'U2', text: 'hello there', ts: '3.0003' });
    expect(received[0].key).toEqual({ platform: 'slack', workspace: 'dm', channel: 'D1' });
    expect(threadTexts('D1')).toEqual(['I see &lt;a cat&gt; &amp; a dog', '[files: first.png, second.png]', 'Anything else?']);
  });

  it('ignores its own messages, bot messages and edits', async () => {
    for (const event of [
      { type: 'message', channel_type: 'im', channel: 'D1', user: 'UBOT', bot_id: 'BBOT', text: 'me', ts: '4.1' },
      { type: 'message', channel_type: 'im', channel: 'D1', bot_id: 'BOTHER', text: 'other bot', ts: '4.2' },
      { type: 'message', subtype: 'message_changed', channel_type: 'im', channel: 'D1', ts: '4.3' },
      { type: 'message', channel_type: 'channel', channel: 'C1', user: 'U1', text: 'no mention', ts: '4.4' },
    ]) {
      const res = await postEvent(adapter.httpPort ?? 0, eventEnvelope(event));
      expect(res.status).toBe(200);
    }
    await new Promise((r) => setTimeout(r, 100));
    expect(received).toHaveLength(0);
  });

  it('answers a retried event (same event_id, X-Slack-Retry-Num) once', async () => {
    const envelope = eventEnvelope(mention('5.0005'), 'EvRetry');
    const port = adapter.httpPort ?? 0;
    expect((await postEvent(port, envelope)).status).toBe(200);
    expect((await postEvent(port, envelope, { headers: { 'x-slack-retry-num': '1', 'x-slack-retry-reason': 'http_timeout' } })).status).toBe(200);
    await eventually(() => received.length >= 1);
    await new Promise((r) => setTimeout(r, 100));
    await adapter.idle();
    expect(received).toHaveLength(1);
    expect(threadTexts('C1', '5.0005')).toHaveLength(3);
  });

  it('answers a message that arrives as both app_mention and message/file_share once', async () => {
    fake.files.set('/files/F101/dog.png', { headers: { 'content-type': 'image/png' }, body: PNG });
    const files = [file('F101', 'dog.png')];
    await deliver(mention('6.0006', { files }));
    const res = await postEvent(adapter.httpPort ?? 0, eventEnvelope({ ...mention('6.0006', { files }), type: 'message', subtype: 'file_share', channel_type: 'channel' }));
    expect(res.status).toBe(200);
    await new Promise((r) => setTimeout(r, 100));
    expect(received).toHaveLength(1);
  });

  it('takes a mention that arrives only as message/file_share (message.channels subscribed)', async () => {
    fake.files.set('/files/F102/x.jpg', { headers: { 'content-type': 'image/jpeg' }, body: JPEG });
    await deliver({ ...mention('6.5'), type: 'message', subtype: 'file_share', channel_type: 'channel', files: [file('F102', 'x.jpg', { mimetype: 'image/jpeg' })] });
    expect(received[0].key.thread).toBe('6.5');
    expect(fetched).toEqual([JPEG]);
  });

  it("answers Slack's URL verification challenge (HTTP mode setup)", async () => {
    const res = await postEvent(adapter.httpPort ?? 0, { type: 'url_verification', token: 'legacy', challenge: 'c-123' });
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('c-123');
  });

  it('rejects a bad signature and a stale timestamp', async () => {
    const port = adapter.httpPort ?? 0;
    const forged = await postEvent(port, eventEnvelope(mention('7.1')), { secret: 'not-the-secret' });
    expect(forged.status).toBe(401);
    const stale = await postEvent(port, eventEnvelope(mention('7.2')), { timestamp: Math.floor(Date.now() / 1000) - 10 * 60 });
    expect(stale.status).toBe(401);
    await new Promise((r) => setTimeout(r, 100));
    expect(received).toHaveLength(0);
    expect(fake.callsTo('chat.postMessage')).toHaveLength(0);
  });

  it('tells the user to add files:read when Slack serves its sign-in page instead of the image', async () => {
    fake.files.set('/files/F103/cat.png', { headers: { 'content-type': 'text/html; charset=utf-8' }, body: '<!DOCTYPE html><html>Sign in</html>' });
    await deliver(mention('8.0008', { files: [file('F103', 'cat.png')] }));
    const [reply] = threadTexts('C1', '8.0008');
    expect(reply).toMatch(/^:warning: .*files:read.*reinstall/);
  });

  it('detects the sign-in page by its content even when served as an image', async () => {
    fake.files.set('/files/F104/cat.png', { headers: { 'content-type': 'image/png' }, body: '\n  <html><body>login</body></html>' });
    await deliver(mention('8.5', { files: [file('F104', 'cat.png')] }));
    expect(threadTexts('C1', '8.5')[0]).toContain('files:read');
  });

  it('never sends the token to a file URL on a foreign host (another port on loopback)', async () => {
    const url = `http://127.0.0.1:${foreign.port}/files-pri/T1-F105/cat.png`;
    await deliver(mention('9.0009', { files: [file('F105', 'cat.png', { url_private_download: url })] }));
    expect(foreign.requests).toEqual([]);
    expect(threadTexts('C1', '9.0009')[0]).toContain(`points outside Slack (127.0.0.1:${foreign.port})`);
  });

  it('does not follow a redirect from the file host to a foreign host', async () => {
    fake.files.set('/files/F106/cat.png', { status: 302, headers: { location: `http://127.0.0.1:${foreign.port}/steal` } });
    await deliver(mention('9.5', { files: [file('F106', 'cat.png')] }));
    expect(fake.fileRequests).toHaveLength(1);
    expect(foreign.requests).toEqual([]);
    expect(threadTexts('C1', '9.5')[0]).toContain('outside Slack');
  });

  it('follows a redirect that stays on the file host', async () => {
    fake.files.set('/files/F107/a.png', { status: 302, headers: { location: '/files/F107/b.png' } });
    fake.files.set('/files/F107/b.png', { headers: { 'content-type': 'image/png' }, body: PNG });
    await deliver(mention('9.7', { files: [file('F107', 'a.png')] }));
    expect(fake.fileRequests.map((r) => r.authorization)).toEqual([`Bearer ${BOT_TOKEN}`, `Bearer ${BOT_TOKEN}`]);
    expect(fetched).toEqual([PNG]);
  });

  it('reads a redirect to the workspace sign-in page as a missing files:read scope, without following it', async () => {
    fake.files.set('/files/F112/cat.png', { status: 302, headers: { location: 'https://fake-team.slack.com/?redir=%2Ffiles-pri%2FF112' } });
    await deliver(mention('9.8', { files: [file('F112', 'cat.png')] }));
    expect(fake.fileRequests).toHaveLength(1);
    expect(threadTexts('C1', '9.8')[0]).toContain('lacks the files:read scope');
  });

  it('asks files.info for a file Slack has not finished processing', async () => {
    fake.fileInfos.set('F113', file('F113', 'late.png'));
    fake.files.set('/files/F113/late.png', { headers: { 'content-type': 'image/png' }, body: PNG });
    await deliver(mention('9.9', { files: [{ id: 'F113', file_access: 'check_file_info' }] }));
    expect(fake.callsTo('files.info')[0].args.file).toBe('F113');
    expect(fetched).toEqual([PNG]);
  });

  it('explains a non-image file without downloading it', async () => {
    await deliver(mention('10.1', { files: [file('F108', 'report.pdf', { mimetype: 'application/pdf', filetype: 'pdf' })] }));
    expect(fake.fileRequests).toEqual([]);
    expect(threadTexts('C1', '10.1')).toEqual([':warning: report.pdf is not an image (application/pdf). Attach a PNG, JPEG or WebP image.']);
  });

  it('explains an oversize file without downloading it', async () => {
    await deliver(mention('10.2', { files: [file('F109', 'huge.png', { size: 5 * 1024 * 1024 })] }));
    expect(fake.fileRequests).toEqual([]);
    expect(threadTexts('C1', '10.2')).toEqual([':warning: huge.png is 5 MB, over the 64 KB limit. Send a smaller image.']);
  });

  it('stops reading a body that is larger than Slack said', async () => {
    fake.files.set('/files/F110/liar.png', { headers: { 'content-type': 'image/png' }, body: Buffer.concat([PNG, Buffer.alloc(MAX_IMAGE_BYTES)]) });
    await deliver(mention('10.3', { files: [file('F110', 'liar.png')] }));
    expect(threadTexts('C1', '10.3')[0]).toContain('larger than the 64 KB limit');
  });

  it('lets the handler report a corrupt image', async () => {
    fake.files.set('/files/F111/bad.png', { headers: { 'content-type': 'image/png' }, body: Buffer.from('definitely not a png') });
    await deliver(mention('10.4', { files: [file('F111', 'bad.png')] }));
    expect(threadTexts('C1', '10.4')).toEqual([':warning: bad.png is not a readable image (corrupt or unsupported).']);
  });

  it('explains missing images when the upload is refused, and still sends the rest of the answer', async () => {
    fake.failures.set('files.getUploadURLExternal', 'missing_scope');
    await deliver(mention('10.5'));
    expect(threadTexts('C1', '10.5')).toEqual([
      'I see &lt;a cat&gt; &amp; a dog',
      ':warning: I could not upload 2 images (the app lacks the files:write scope: add it under OAuth &amp; Permissions and reinstall the app).',
      'Anything else?',
    ]);
  });

  it('treats "reset" in a thread mention as the reset intent for that thread', async () => {
    await deliver(mention('11.1', { text: '<@UBOT> reset' }));
    expect(received[0].intent).toEqual({ kind: 'reset' });
    expect(received[0].key.thread).toBe('11.1');
    expect(threadTexts('C1', '11.1')).toEqual(['Conversation reset.']);
  });
});

describe('/fromage slash commands over HTTP', () => {
  function command(text: string, responseId: string, channel = 'C9'): Record<string, string> {
    return { command: '/fromage', text, team_id: 'T1', channel_id: channel, channel_name: 'general', user_id: 'U3', user_name: 'ada', trigger_id: `trig-${responseId}`, response_url: fake.responseUrl(responseId), token: 'legacy' };
  }

  it('retrieve: acks at once, says it is working (ephemeral), posts the results in the channel', async () => {
    const started = Date.now();
    const res = await postCommand(adapter.httpPort ?? 0, command('retrieve a red bicycle', 'r1'));
    expect(res.status).toBe(200);
    expect(Date.now() - started).toBeLessThan(3000);
    await eventually(() => received.length === 1);
    await adapter.idle();

    expect(received[0].intent).toEqual({ kind: 'retrieve', query: 'a red bicycle' });
    expect(received[0].key).toEqual({ platform: 'slack', workspace: 'T1', channel: 'C9' });
    expect(fake.responses.get('r1')?.[0]).toMatchObject({ response_type: 'ephemeral', text: expect.stringContaining('a red bicycle') });
    const texts = threadTexts('C9');
    expect(texts).toEqual(['<@U3> asked for `/fromage retrieve` a red bicycle\nResults for a red bicycle', '[files: r1.png, r2.png]']);
  });

  it('reset: the handler gets the reset intent for the channel and its notice goes privately', async () => {
    await postCommand(adapter.httpPort ?? 0, command('reset', 'r2'));
    await eventually(() => received.length === 1);
    await adapter.idle();
    expect(received[0].intent).toEqual({ kind: 'reset' });
    expect(received[0].key).toEqual({ platform: 'slack', workspace: 'T1', channel: 'C9' });
    expect(fake.responses.get('r2')).toEqual([{ response_type: 'ephemeral', text: 'Conversation reset.' }]);
    expect(threadTexts('C9')).toEqual([]);
  });

  it('help: answered privately', async () => {
    await postCommand(adapter.httpPort ?? 0, command('help', 'r3'));
    await eventually(() => received.length === 1);
    await adapter.idle();
    expect(received[0].intent).toEqual({ kind: 'help' });
    expect(fake.responses.get('r3')?.[0].text).toBe('Mention me with an image.');
  });

  it('an unknown subcommand or an empty query gets usage, privately, without reaching the handler', async () => {
    await postCommand(adapter.httpPort ?? 0, command('dance', 'r4'));
    await postCommand(adapter.httpPort ?? 0, command('retrieve   ', 'r5'));
    await eventually(() => fake.responses.has('r4') && fake.responses.has('r5'));
    expect(fake.responses.get('r4')?.[0].text).toContain("I don't know `dance`");
    expect(fake.responses.get('r5')?.[0].text).toContain('Tell me what to look for');
    expect(received).toHaveLength(0);
  });

  it('tells the user to invite the bot when it cannot post in the channel', async () => {
    fake.failures.set('chat.postMessage', 'not_in_channel');
    await postCommand(adapter.httpPort ?? 0, command('retrieve cats', 'r6'));
    await eventually(() => received.length === 1);
    await adapter.idle();
    const texts = (fake.responses.get('r6') ?? []).map((r) => r.text);
    expect(texts.at(-1)).toContain('/invite');
  });
});
