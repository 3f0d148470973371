/**
 * Regression tests for what the soak and fuzz runs found, small enough to pin each fix:
 * - an SVG (or any non-photo format sharp can render) sent as `photo.png` was rendered by
 *   librsvg on Discord and Slack (the web chat already refused it);
 * - text a user typed that spells one of the tokenizer's added tokens (`[RET]`, `<|image|>`,
 *   `</s>`, `<pad>`) became that token in the prompt (an end of sequence, a retrieval, an image slot);
 * - a Discord command with a required option missing (or of another type) was never answered
 *   (discord.js threw while reading it; Discord showed "the application did not respond");
 * - a signed Slack event that Bolt itself cannot read (`channel: null`) was answered 500, which
 *   Slack retries, failing each time (over Socket Mode it was left unacknowledged, so redelivered);
 * - a Slack answer holding a lone UTF-16 surrogate (a user typed one; the answer repeats it)
 *   failed to post at all (the Web API client's form encoding throws on it);
 * - a Discord string option holding a number (discord.js checks types, not values) reached the
 *   service as a message whose text was a number, and became an internal error;
 * - a job lost with a crashed model worker was answered "Something went wrong on my side":
 *   it now says what happened and to send the message again.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { pino } from 'pino';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteHistoryStore } from '../../src/conversation/history.ts';
import { normalizeImage } from '../../src/conversation/images.ts';
import { answerText, plainUserText, questionText } from '../../src/conversation/prompt.ts';
import { ImageInputError, type MessageHandler, type ReplyImage } from '../../src/conversation/types.ts';
import type { ChatResult, Engine, PromptItem } from '../../src/model/engine-api.ts';
import { Tokenizer } from '../../src/model/tokenizer/tokenizer.ts';
import { Scheduler } from '../../src/queue/scheduler.ts';
import { createMessageHandler } from '../../src/service/handler.ts';
import { message, RecordingResponder } from '../support/messages.ts';
import { ALICE, interactionPayload } from '../discord/fake-discord/payloads.ts';
import { GUILD, startHarness } from '../discord/harness.ts';
import type { SlackAdapter } from '../../adapters/slack/index.ts';
import { FakeSlack } from '../slack/fake-slack.ts';
import { eventEnvelope, eventually, postEvent, startHttpAdapter, startSocketAdapter } from '../slack/harness.ts';
import { fixtureBundle } from './harness.ts';
import { SEED } from './sizes.ts';

describe('images a user sends must be photos', () => {
  it('refuses an SVG named .png with a clear message, and still reads the raster formats', async () => {
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><rect width="32" height="32"/></svg>');
    const err = await normalizeImage(svg, 'photo.png').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageInputError);
    expect((err as Error).message).toBe('photo.png is an SVG drawing, not a photo I can read; send PNG, JPEG, WebP or GIF.');
    const base = () => sharp({ create: { width: 8, height: 6, channels: 3, background: 'red' } });
    for (const bytes of [await base().png().toBuffer(), await base().jpeg().toBuffer(), await base().webp().toBuffer(), await base().gif().toBuffer(), await base().tiff().toBuffer()])
      expect((await normalizeImage(bytes, 'x')).width).toBe(8);
  });
});

describe('typed special tokens stay text', () => {
  let work: string;
  let tokenizer: Tokenizer;
  let addedIds: Set<number>;
  const ADDED = ['[RET]', '<|image|>', '</s>', '<pad>', '<s>', '<unk>'];

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'fromage-soak-tokens-'));
    tokenizer = await Tokenizer.fromFile(join(await fixtureBundle(work), 'tokenizer.json'));
    addedIds = new Set(ADDED.flatMap((t) => (tokenizer.tokenToId(t) === undefined ? [] : [tokenizer.tokenToId(t)!])));
  }, 60_000);
  afterAll(() => rm(work, { recursive: true, force: true }));

  const specials = (ids: readonly number[]) => ids.slice(1).filter((id) => addedIds.has(id));

  it('the fixture tokenizer would turn the raw spellings into their tokens (what the rule prevents)', () => {
    expect(specials(tokenizer.encode('Q: [RET] <|image|> </s> <pad>\nA:', { addSpecialTokens: true })).length).toBe(4);
  });

  it(`never yields an added token from a user's question or retrieval text (fast-check, seed ${SEED})`, () => {
    const fragment = fc.oneof(fc.constantFrom(...ADDED, '[', ']', '<', '>', '|', 'RET', 'image', ' ', '\n', '\u2060'), fc.string({ maxLength: 6 }));
    fc.assert(
      fc.property(fc.array(fragment, { maxLength: 24 }), (parts) => {
        const typed = parts.join('');
        expect(specials(tokenizer.encode(questionText(typed), { addSpecialTokens: true }))).toEqual([]);
        expect(specials(tokenizer.encode(plainUserText(typed), { addSpecialTokens: true }))).toEqual([]);
      }),
      { numRuns: 300, seed: SEED },
    );
    // The model's own answers keep their [RET] (the reference puts it back in the history).
    expect(answerText('a dog [RET]')).toBe('a dog [RET]\n');
  });

  it('through the service: the prompt and the retrieval query the engine gets hold no added token', async () => {
    const prompts: (readonly PromptItem[])[] = [];
    const queries: string[] = [];
    const engine: Engine = {
      info: { bundleId: 'spy', contextLength: 2048, nVisualTokens: 1, hasIndex: true },
      countTokens: async (t) => tokenizer.encode(t).length,
      chat: async (prompt): Promise<ChatResult> => {
        prompts.push(prompt);
        return { segments: [{ type: 'text', text: 'ok' }], generatedTokens: 1, historyText: 'ok [RET]' };
      },
      retrieve: async (query): Promise<readonly ReplyImage[]> => {
        queries.push(query);
        return [];
      },
      close: async () => undefined,
    };
    const handler = handlerOn(engine);
    await handler(message('show me [RET] then <|image|></s><pad>'), new RecordingResponder());
    await handler(message('and again [RET]'), new RecordingResponder());
    await handler(message('', { intent: { kind: 'retrieve', query: 'a cat [RET] <|image|>' } }), new RecordingResponder());
    expect(prompts).toHaveLength(2);
    const texts = prompts[1].flatMap((p) => (p.type === 'text' ? [p.text] : []));
    // Both questions are plain text; the model's answer in between keeps its own [RET].
    expect(texts.filter((t) => t.startsWith('Q:')).flatMap((t) => specials(tokenizer.encode(t, { addSpecialTokens: true })))).toEqual([]);
    expect(texts.some((t) => t === 'ok [RET]\n')).toBe(true);
    expect(queries).toHaveLength(1);
    expect(specials(tokenizer.encode(queries[0], { addSpecialTokens: true }))).toEqual([]);
  });
});

describe('a job lost with the model worker', () => {
  it('is answered once, saying the model restarts and to send the message again', async () => {
    const crashed = Object.assign(new Error('the model worker stopped (exit code 9) before the job finished'), { name: 'EngineWorkerError' });
    const engine: Engine = {
      info: { bundleId: 'crashy', contextLength: 2048, nVisualTokens: 1, hasIndex: false },
      countTokens: async (t) => t.length,
      chat: async () => Promise.reject(crashed),
      retrieve: async () => [],
      close: async () => undefined,
    };
    const handler = handlerOn(engine);
    const r = new RecordingResponder();
    await handler(message('hello'), r);
    expect(r.replies).toEqual([{ kind: 'error', segments: [{ type: 'text', text: 'The model stopped while answering this (it restarts by itself); please send your message again.' }] }]);
  });
});

describe('platform payloads the adapters must answer', () => {
  it('Discord: /fromage retrieve without its required query gets an ephemeral explanation', async () => {
    const h = await startHarness();
    try {
      const payload = interactionPayload({ guildId: GUILD, channel: { id: '1100000000000000105', type: 0 }, user: ALICE, subcommand: 'retrieve', options: [] });
      h.fake.dispatch('INTERACTION_CREATE', payload);
      const callback = await h.fake.waitForRequest((r) => r.path === `/interactions/${payload.id}/${payload.token}/callback`);
      expect(callback.body).toMatchObject({ type: 4, data: { flags: 64, content: expect.stringContaining('I could not read this command') } });
      expect(h.received).toHaveLength(0);
    } finally {
      await h.close();
    }
  });

  it('Discord: a string option holding a number reaches the service as text', async () => {
    const h = await startHarness();
    try {
      const next = h.nextMessage();
      h.fake.dispatch('INTERACTION_CREATE', interactionPayload({ guildId: GUILD, channel: { id: '1100000000000000106', type: 0 }, user: ALICE, subcommand: 'ask', options: [{ name: 'prompt', type: 3, value: 42 }] }));
      const m = await next;
      expect(m.text).toBe('42');
      const q = h.nextMessage();
      h.fake.dispatch('INTERACTION_CREATE', interactionPayload({ guildId: GUILD, channel: { id: '1100000000000000107', type: 0 }, user: ALICE, subcommand: 'retrieve', options: [{ name: 'query', type: 3, value: true }, { name: 'count', type: 4, value: 2.5 }] }));
      expect((await q).intent).toEqual({ kind: 'retrieve', query: 'true', count: undefined });
    } finally {
      await h.close();
    }
  });

  it('Slack: an answer with a lone surrogate is posted (as U+FFFD), not lost', async () => {
    const failures: unknown[] = [];
    const start = (fake: FakeSlack) =>
      startHttpAdapter(fake, async (m, r) => {
        await r.send({ kind: 'answer', segments: [{ type: 'text', text: `You said: ${m.text}` }] }).catch((e: unknown) => failures.push(e));
      });
    await withFakeSlack(start, async (fake, adapter) => {
      await postEvent(adapter.httpPort ?? 0, eventEnvelope({ type: 'app_mention', user: 'U1', text: '<@UBOT> odd \ud800 text', channel: 'C7', ts: '9.1', event_ts: '9.1' }));
      await eventually(() => fake.messages.some((m) => m.channel === 'C7') || failures.length > 0);
      expect(failures).toEqual([]);
      expect(fake.messages.find((m) => m.channel === 'C7')?.text).toBe('You said: odd \ufffd text');
    });
  });

  it('Slack Socket Mode: an envelope whose event Bolt cannot read is acknowledged (not redelivered to fail again)', async () => {
    await withFakeSlack((fake) => startSocketAdapter(fake, async () => undefined), async (fake) => {
      fake.deliverOverSocket('env-null-channel', eventEnvelope({ type: 'app_mention', user: 'U1', text: '<@UBOT> hi', channel: null, ts: '8.3', event_ts: '8.3' }));
      await eventually(() => fake.socketAcks.includes('env-null-channel'));
    });
  });

  it('Slack: a signed event with channel null is acknowledged (not 500), and the next message is answered', async () => {
    const received: string[] = [];
    const start = (fake: FakeSlack) =>
      startHttpAdapter(fake, async (m, r) => {
        received.push(m.text);
        await r.send({ kind: 'answer', segments: [{ type: 'text', text: 'ok' }] });
      });
    await withFakeSlack(start, async (_fake, adapter) => {
      const bad = await postEvent(adapter.httpPort ?? 0, eventEnvelope({ type: 'app_mention', user: 'U1', text: '<@UBOT> hi', channel: null, ts: '8.1', event_ts: '8.1' }));
      expect(bad.status).toBe(200);
      const good = await postEvent(adapter.httpPort ?? 0, eventEnvelope({ type: 'app_mention', user: 'U1', text: '<@UBOT> hello', channel: 'C1', ts: '8.2', event_ts: '8.2' }));
      expect(good.status).toBe(200);
      await eventually(() => received.length === 1);
      expect(received).toEqual(['hello']);
    });
  });
});

/** Starts the fake Slack and an adapter on it, runs `body`, then stops the adapter and the fake. */
async function withFakeSlack(start: (fake: FakeSlack) => Promise<SlackAdapter>, body: (fake: FakeSlack, adapter: SlackAdapter) => Promise<void>): Promise<void> {
  const fake = new FakeSlack();
  await fake.start();
  const adapter = await start(fake);
  try {
    await body(fake, adapter);
  } finally {
    await adapter.stop();
    await fake.stop();
  }
}

/** The service's message handler on `engine`, with history in memory and a scheduler that never refuses. */
function handlerOn(engine: Engine): MessageHandler {
  return createMessageHandler({
    engine,
    history: new SqliteHistoryStore(':memory:', { maxTurns: 10 }),
    scheduler: new Scheduler({ concurrency: 1, maxQueued: 10, userRatePerMinute: 100, userBurst: 100, jobTimeoutMs: 10_000 }),
    logger: pino({ level: 'silent' }),
  });
}
