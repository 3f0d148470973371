import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { SqliteHistoryStore } from '../../src/conversation/history.ts';
import { Scheduler } from '../../src/queue/scheduler.ts';
import { createMessageHandler, type HandlerDeps } from '../../src/service/handler.ts';
import { FakeEngine } from '../support/fake-engine.ts';
import { bytesImage, message, RecordingResponder } from '../support/messages.ts';

const png = readFileSync('test/fixtures/images/alpha.png');

function setup(overrides: Partial<HandlerDeps> = {}, engineOptions = {}) {
  const engine = new FakeEngine(engineOptions);
  const history = new SqliteHistoryStore(':memory:', { maxTurns: 50 });
  const scheduler = new Scheduler({ concurrency: 1, maxQueued: 10, userRatePerMinute: 600, userBurst: 100, jobTimeoutMs: 5000 });
  const handler = createMessageHandler({ engine, history, scheduler, logger: pino({ level: 'silent' }), ...overrides });
  const ask = async (...args: Parameters<typeof message>) => {
    const r = new RecordingResponder();
    await handler(message(...args), r);
    return r;
  };
  return { engine, history, scheduler, handler, ask };
}

describe('message handler', () => {
  it('answers a message and keeps the dialogue for the next one', async () => {
    const { ask, engine, history } = setup();
    const first = await ask('what is this?', { images: [bytesImage('a.png', png)] });
    expect(first.replies).toHaveLength(1);
    expect(first.replies[0].kind).toBe('answer');
    expect(first.text()).toBe('I see 1 image(s). You said: what is this?');
    // Once on arrival (while the image is read), once when the model starts.
    expect(first.typingCount).toBe(2);
    await ask('and now?');
    const prompt = engine.calls[1].prompt;
    expect(prompt.map((p) => (p.type === 'image' ? '<img>' : p.text))).toEqual([
      '<img>',
      '',
      'Q: what is this?\nA:',
      'I see 1 image(s). You said: what is this?\n',
      'Q: and now?\nA:',
    ]);
    expect(history.turns('shell:test:c1:-')).toHaveLength(4);
  });

  it('lets a message sent right after another see its question and answer', async () => {
    const { handler, engine } = setup({}, { delayMs: 30 });
    const a = new RecordingResponder();
    const b = new RecordingResponder();
    await Promise.all([handler(message('first'), a), handler(message('second'), b)]);
    expect(engine.calls[1].prompt.map((p) => (p.type === 'text' ? p.text : '<img>'))).toEqual([
      'Q: first\nA:',
      'I see 0 image(s). You said: first\n',
      'Q: second\nA:',
    ]);
  });

  it('does not bring back an exchange whose answer finished after a reset', async () => {
    const { handler, history } = setup({}, { delayMs: 40 });
    const pending = handler(message('to be forgotten'), new RecordingResponder());
    await new Promise((r) => setTimeout(r, 10));
    await handler(message('', { intent: { kind: 'reset' } }), new RecordingResponder());
    await pending;
    expect(history.turns('shell:test:c1:-')).toEqual([]);
  });

  it('keeps arrival order when an image message is followed by quick text messages (issue 11, bug 1)', async () => {
    const { handler, history } = setup();
    // The image takes a while to arrive (a download); the texts sent after it are ready at once.
    const slowImage = { ...bytesImage('landscape.png', png), fetch: async () => new Promise<Buffer>((r) => setTimeout(() => r(png), 60)) };
    const brokenSlow = { ...bytesImage('broken.png', png), fetch: async () => new Promise<Buffer>((r) => setTimeout(() => r(png.subarray(0, 40)), 60)) };
    const said: string[] = [];
    const recorder = () => {
      const r = new RecordingResponder();
      const send = r.send.bind(r);
      r.send = async (reply) => {
        said.push(reply.segments.map((s) => (s.type === 'text' ? s.text : '[images]')).join(' '));
        await send(reply);
      };
      return r;
    };
    await Promise.all([
      handler(message('FIRST with image', { images: [slowImage] }), recorder()),
      handler(message('SECOND'), recorder()),
      handler(message('', { intent: { kind: 'retrieve', query: 'THIRD' } }), recorder()),
      handler(message('FOURTH', { images: [brokenSlow] }), recorder()),
      handler(message('FIFTH'), recorder()),
    ]);
    expect(history.turns('shell:test:c1:-').filter((t) => t.role === 'user').map((t) => t.text)).toEqual(['FIRST with image', 'SECOND', 'FIFTH']);
    expect(said).toEqual([
      'I see 1 image(s). You said: FIRST with image',
      'I see 1 image(s). You said: SECOND',
      '[images]',
      expect.stringMatching(/^I could not use broken.png/),
      'I see 1 image(s). You said: FIFTH',
    ]);
  });

  it('never rate-limits or refuses the one terminal user, but names a platform user\'s own limit', async () => {
    const scheduler = new Scheduler({ concurrency: 1, maxQueued: 2, userRatePerMinute: 1, userBurst: 1, jobTimeoutMs: 5000 });
    const { handler } = setup({ scheduler }, { delayMs: 5 });
    const terminal = Array.from({ length: 8 }, () => new RecordingResponder());
    await Promise.all(terminal.map((r, i) => handler({ ...message(`line ${i}`), key: { platform: 'shell', workspace: 'local', channel: 'terminal' } }, r)));
    expect(terminal.map((r) => r.replies[0].kind)).toEqual(Array(8).fill('answer'));
    const platform = (t: string) => ({ ...message(t), key: { platform: 'discord' as const, workspace: 'g', channel: 'c' } });
    await handler(platform('one'), new RecordingResponder());
    const limited = new RecordingResponder();
    await handler(platform('two'), limited);
    expect(limited.replies[0].kind).toBe('busy');
    expect(limited.text()).toMatch(/your own message limit \(1 per minute, 1 at once\); try again in 60 s/);
    expect(limited.text()).not.toMatch(/faster than I can answer/);
  });

  it('restores default settings on settings reset', async () => {
    const { ask, history } = setup();
    await ask('', { intent: { kind: 'settings', changes: { maxWords: 48, temperature: 0.7 } } });
    const r = await ask('', { intent: { kind: 'settings', changes: {}, reset: true } });
    expect(r.text()).toMatch(/back to the defaults: ret_scale=1 max_images=2 words=32 temperature=0/);
    expect(history.settings('shell:test:c1:-')).toEqual({ retScaleFactor: 1, maxImages: 2, maxWords: 32, temperature: 0 });
  });

  it('says on (re)opening that a kept conversation is still remembered, and nothing for a new one', async () => {
    const { ask } = setup();
    expect((await ask('', { intent: { kind: 'welcome' } })).replies).toEqual([]);
    await ask('hello');
    expect((await ask('', { intent: { kind: 'welcome' } })).text()).toMatch(/still remember this conversation \(1 earlier message, kept across restarts\)\. Type \/reset to start afresh/);
  });

  it('returns model images in order after the text', async () => {
    const { ask } = setup();
    const r = await ask('show me a dog');
    expect(r.replies[0].segments.map((s) => s.type)).toEqual(['text', 'images']);
  });

  it('asks for input on an empty message', async () => {
    const { ask, engine } = setup();
    const r = await ask('   ');
    expect(r.replies[0].kind).toBe('error');
    expect(r.text()).toMatch(/Send me some text, an image, or both/);
    expect(engine.calls).toHaveLength(0);
  });

  it('uses a default question for an image without text', async () => {
    const { ask, engine } = setup();
    await ask('', { images: [bytesImage('a.png', png)] });
    expect(engine.calls[0].prompt.at(-1)).toEqual({ type: 'text', text: 'Q: what is this?\nA:' });
  });

  it('trims a 20,000-character message to the budget and says so', async () => {
    const { ask, engine } = setup({}, { contextLength: 512 });
    const long = 'word '.repeat(3999) + 'words';
    const r = await ask(long);
    expect(r.replies[0].kind).toBe('answer');
    // One statement, with the limit that cut deepest (issue 11).
    expect(r.text()).toMatch(/^\(Your message was 20000 characters; I read the first \d+, as much as fits in the model with its answer\.\)$/m);
    expect(r.text().match(/I read/g)).toHaveLength(1);
    const q = engine.calls[0].prompt.at(-1);
    expect(q?.type === 'text' && (await engine.countTokens(q.text))).toBeLessThanOrEqual(512 - 32);
  });

  it('caps 50 images to the configured maximum and says so', async () => {
    const { ask, engine } = setup({ limits: { maxImagesPerMessage: 4 } });
    const images = Array.from({ length: 50 }, (_, i) => bytesImage(`i${i}.png`, png));
    const r = await ask('many', { images });
    expect(r.text()).toMatch(/You sent 50 images; I looked at the first 4\./);
    expect(engine.calls[0].prompt.filter((p) => p.type === 'image')).toHaveLength(4);
  });

  it('replies clearly to a corrupt image and keeps going', async () => {
    const { ask, engine } = setup();
    const r = await ask('look', { images: [bytesImage('broken.png', png.subarray(0, 60))] });
    expect(r.replies[0].kind).toBe('error');
    expect(r.text()).toMatch(/I could not use broken.png/);
    expect(engine.calls).toHaveLength(0);
    const ok = await ask('still there?');
    expect(ok.replies[0].kind).toBe('answer');
  });

  it('replies clearly to a non-image and an oversized image', async () => {
    const { ask } = setup({ limits: { maxImageBytes: 1000 } });
    expect((await ask('x', { images: [bytesImage('notes.txt', Buffer.from('just some text, not an image'))] })).text()).toMatch(/notes.txt.*not an image/);
    expect((await ask('x', { images: [bytesImage('big.png', png)] })).text()).toMatch(/big.png is too large/);
  });

  it('handles retrieve, reset, settings and help intents', async () => {
    const { ask, history } = setup();
    const got = await ask('', { intent: { kind: 'retrieve', query: 'a red circle', count: 3 } });
    expect(got.replies[0].segments[0]).toMatchObject({ type: 'images' });
    expect(got.replies[0].segments[0].type === 'images' && got.replies[0].segments[0].images).toHaveLength(3);
    expect((await ask('', { intent: { kind: 'retrieve', query: '  ' } })).replies[0].kind).toBe('error');
    await ask('hello');
    expect((await ask('', { intent: { kind: 'reset' } })).text()).toMatch(/forgot this conversation/);
    expect(history.turns('shell:test:c1:-')).toHaveLength(0);
    expect((await ask('', { intent: { kind: 'settings', changes: { maxWords: 48 } } })).text()).toMatch(/words=48/);
    expect((await ask('', { intent: { kind: 'settings', changes: { maxWords: 9999 } } })).text()).toMatch(/Setting words: .*128/);
    expect((await ask('', { intent: { kind: 'help' } })).text()).toMatch(/retrieve <text>/);
  });

  it('offers settings, and settings reset, in help on every platform (each has the command)', async () => {
    const { helpFor } = await import('../../src/service/handler.ts');
    for (const platform of ['discord', 'slack', 'shell'] as const) expect(helpFor(platform)).toMatch(/settings reset restores the defaults/);
  });

  it('says why it cannot retrieve without an index', async () => {
    const { ask } = setup({}, { hasIndex: false });
    const r = await ask('', { intent: { kind: 'retrieve', query: 'cats' } });
    expect(r.replies[0].kind).toBe('error');
    expect(r.text()).toMatch(/No image index is configured.*fromage index import/);
  });

  it('tells a user who floods the bot when to retry', async () => {
    const scheduler = new Scheduler({ concurrency: 1, maxQueued: 10, userRatePerMinute: 1, userBurst: 1, jobTimeoutMs: 5000 });
    const { handler } = setup({ scheduler });
    const onDiscord = (t: string) => ({ ...message(t), key: { platform: 'discord' as const, workspace: 'g', channel: 'c' } });
    await handler(onDiscord('one'), new RecordingResponder());
    const r = new RecordingResponder();
    await handler(onDiscord('two'), r);
    expect(r.replies[0].kind).toBe('busy');
    expect(r.text()).toMatch(/try again in 60 s/);
  });

  it('turns an unexpected failure into a reply with a reference, not a crash', async () => {
    const { handler, engine } = setup();
    engine.chat = async () => {
      throw new Error('onnxruntime exploded');
    };
    const r = new RecordingResponder();
    await handler(message('hi'), r);
    expect(r.text()).toMatch(/Something went wrong on my side \(reference [0-9a-f]{8}\)/);
    expect(r.text()).not.toMatch(/onnxruntime/);
  });
});
