/**
 * The service core: what happens to every IncomingMessage whatever the platform. Validates
 * input, keeps the history, builds the FROMAGe prompt, queues the job, and answers through the
 * adapter's Responder. Every failure a user can cause becomes a clear reply; nothing here throws
 * to the adapter.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Engine } from '../model/engine-api.ts';
import { EngineInputError } from '../model/engine-api.ts';
import type { HistoryStore, StoredImage, Turn } from '../conversation/history.ts';
import { normalizeImage } from '../conversation/images.ts';
import { conversationId } from '../conversation/key.ts';
import { buildPrompt, fitText, plainUserText, PromptTooLongError, questionText } from '../conversation/prompt.ts';
import { describeSettings, parseSettingsChanges } from '../conversation/settings.ts';
import {
  DEFAULT_SETTINGS,
  ImageInputError,
  type IncomingMessage,
  type MessageHandler,
  type Reply,
  type Responder,
  type Segment,
} from '../conversation/types.ts';
import { SchedulerRejection, type Reservation, type Scheduler } from '../queue/scheduler.ts';
import type { ServiceMetrics } from './metrics.ts';

export interface HandlerLimits {
  readonly maxImagesPerMessage: number;
  readonly maxImageBytes: number;
  /** Characters kept of one message before tokenizing. */
  readonly maxMessageChars: number;
}

export interface HandlerDeps {
  readonly engine: Engine;
  readonly history: HistoryStore;
  readonly scheduler: Scheduler;
  readonly logger: Logger;
  readonly limits?: Partial<HandlerLimits>;
  readonly metrics?: ServiceMetrics;
}

export const DEFAULT_LIMITS: HandlerLimits = { maxImagesPerMessage: 4, maxImageBytes: 20 * 1024 * 1024, maxMessageChars: 4000 };

/** The question used when a message has images but no text. */
export const DEFAULT_IMAGE_QUESTION = 'what is this?';

export const HELP_TEXT = [
  'I am FROMAGe: I look at images and talk about them, and I can answer with images I retrieve.',
  '- Mention me with a message, an image, or both; I remember the conversation in this channel or thread.',
  '- retrieve <text>: find images for a description.',
  '- reset: forget this conversation.',
  '- settings [ret_scale=1.0] [max_images=2] [words=32] [temperature=0]: show or change how I answer here; settings reset restores the defaults.',
  '- help: this message.',
].join('\n');

export function helpFor(_platform: IncomingMessage['key']['platform']): string {
  return HELP_TEXT;
}

/** The terminal has one local user, who started the bot: queued, never rate-limited or refused. */
const TRUSTED_PLATFORMS: ReadonlySet<IncomingMessage['key']['platform']> = new Set(['shell']);

/** How to ask for help, as each platform spells it. */
export function helpHint(platform: IncomingMessage['key']['platform']): string {
  if (platform === 'shell') return 'Type /help to see what I can do.';
  if (platform === 'discord') return 'Use /fromage help to see what I can do.';
  return 'Say "help" to see what I can do.';
}

const userOf = (message: IncomingMessage) => `${message.key.platform}:${message.author.id}`;

const text = (t: string): Segment => ({ type: 'text', text: t });
const reply = (kind: Reply['kind'], ...segments: Segment[]): Reply => ({ kind, segments });

export function createMessageHandler(deps: HandlerDeps): MessageHandler {
  const limits = { ...DEFAULT_LIMITS, ...deps.limits };
  const { engine, history, scheduler, logger, metrics } = deps;
  /** Resets per conversation, so an answer finishing after a reset is not written back. */
  const resets = new Map<string, number>();
  /** Per conversation, the latest message so far: when it first showed something, and when all its replies were delivered. */
  const latest = new Map<string, { shown: Promise<void>; delivered: Promise<void> }>();

  /**
   * Replies leave in arrival order: a message's replies wait until the one before it in the
   * conversation has had its replies delivered (a refused image does not jump ahead of the
   * answer still being written for an earlier message). Its first sign of life (typing, a
   * queue position) waits until the one before it showed one, so platforms that turn that
   * into a status message which later becomes the answer (Slack) keep the order on screen too.
   */
  function inArrivalOrder(conversation: string, responder: Responder): { responder: Responder; done: () => void } {
    const before = latest.get(conversation) ?? { shown: Promise.resolve(), delivered: Promise.resolve() };
    let markShown!: () => void;
    let markDelivered!: () => void;
    const mine = { shown: new Promise<void>((r) => (markShown = r)), delivered: new Promise<void>((r) => (markDelivered = r)) };
    latest.set(conversation, mine);
    void mine.delivered.then(() => {
      if (latest.get(conversation) === mine) latest.delete(conversation);
    });
    const visibly = async (show: () => Promise<void>) => {
      await before.shown;
      try {
        await show();
      } finally {
        markShown();
      }
    };
    const ordered: Responder = {
      send: async (r) => {
        await before.delivered;
        await visibly(() => responder.send(r));
      },
      typing: () => visibly(() => responder.typing()),
      progress: (update) => visibly(() => responder.progress(update)),
    };
    return {
      responder: ordered,
      done: () => {
        markShown();
        markDelivered();
      },
    };
  }

  async function handle(message: IncomingMessage, platformResponder: Responder): Promise<void> {
    const conversation = conversationId(message.key);
    const { responder, done } = inArrivalOrder(conversation, platformResponder);
    try {
      await dispatch(message, conversation, responder);
    } catch (err) {
      const ref = randomUUID().slice(0, 8);
      metrics?.countError('internal');
      logger.error({ err, ref, platform: message.key.platform }, 'request failed');
      await responder
        .send(reply('error', text(`Something went wrong on my side (reference ${ref}); please try again.`)))
        .catch((e: unknown) => logger.warn({ err: e, ref }, 'could not deliver the error reply'));
    } finally {
      done();
    }
  }

  async function dispatch(message: IncomingMessage, conversation: string, responder: Responder): Promise<void> {
    metrics?.countMessage(message.key.platform, message.intent.kind);
    // The conversation's place is taken now, on arrival, before any slow preparation (image
    // download and decoding, token counting): a quick message sent next cannot overtake this one.
    if (message.intent.kind === 'chat' || message.intent.kind === 'retrieve') {
      const place = scheduler.reserve(conversation, userOf(message));
      // A sign of life now, in arrival order, while images download and the queue decides
      // (not for an empty message, which is answered at once).
      const empty = message.intent.kind === 'retrieve' ? !message.intent.query.trim() : !message.text.trim() && message.images.length === 0;
      if (!empty) void responder.typing().catch(() => {});
      try {
        if (message.intent.kind === 'retrieve') return await retrieve(message, message.intent.query, message.intent.count, conversation, responder, place);
        return await chat(message, conversation, responder, place);
      } finally {
        place.release();
      }
    }
    switch (message.intent.kind) {
      case 'help':
        return responder.send(reply('notice', text(helpFor(message.key.platform))));
      case 'reset':
        history.reset(conversation);
        resets.set(conversation, (resets.get(conversation) ?? 0) + 1);
        return responder.send(reply('notice', text('I forgot this conversation; we start afresh.')));
      case 'settings': {
        if (message.intent.reset) {
          const now = history.updateSettings(conversation, { ...DEFAULT_SETTINGS });
          return responder.send(reply('notice', text(`Settings here are back to the defaults: ${describeSettings(now)}`)));
        }
        const parsed = parseSettingsChanges(message.intent.changes as Record<string, unknown>);
        if (!parsed.ok) return responder.send(reply('error', text(parsed.message)));
        const now = Object.keys(parsed.changes).length
          ? history.updateSettings(conversation, parsed.changes)
          : history.settings(conversation);
        return responder.send(reply('notice', text(`Settings here: ${describeSettings(now)}`)));
      }
      case 'welcome': {
        // A new conversation needs no introduction; a kept one is worth knowing about.
        const kept = history.turns(conversation).filter((t) => t.role === 'user').length;
        if (kept === 0) return;
        const what = kept === 1 ? '1 earlier message' : `${kept} earlier messages`;
        return responder.send(reply('notice', text(`I still remember this conversation (${what}, kept across restarts). ${message.key.platform === 'shell' ? 'Type /reset' : 'Say reset'} to start afresh.`)));
      }
    }
  }

  async function retrieve(message: IncomingMessage, query: string, count: number | undefined, conversation: string, responder: Responder, place: Reservation) {
    const q = query.trim().slice(0, limits.maxMessageChars);
    if (!q) return responder.send(reply('error', text('Tell me what to look for, for example: retrieve a dog on a beach')));
    if (!engine.info.hasIndex)
      return responder.send(reply('error', text('No image index is configured, so I cannot retrieve images. The bot owner can add one with `fromage index import` (see the README).')));
    const n = Math.max(1, Math.min(4, count ?? history.settings(conversation).maxImages));
    const images = await runJob(message, place, responder, { run: (signal) => engine.retrieve(plainUserText(q), n, { signal }) });
    if (!images) return;
    if (images.length === 0) return responder.send(reply('notice', text(`I found no image I could load for "${q}".`)));
    await responder.send(reply('answer', { type: 'images', images }));
  }

  async function chat(message: IncomingMessage, conversation: string, responder: Responder, place: Reservation) {
    const notes: string[] = [];
    let question = message.text.trim();
    let inputs = message.images;
    if (!question && inputs.length === 0)
      return responder.send(reply('error', text(`Send me some text, an image, or both. ${helpHint(message.key.platform)}`)));
    if (inputs.length > limits.maxImagesPerMessage) {
      notes.push(`You sent ${inputs.length} images; I looked at the first ${limits.maxImagesPerMessage}.`);
      inputs = inputs.slice(0, limits.maxImagesPerMessage);
    }
    const images: StoredImage[] = [];
    for (const input of inputs) {
      try {
        const bytes = await input.fetch(limits.maxImageBytes);
        const normalized = await normalizeImage(bytes, input.name);
        images.push({ hash: normalized.hash, data: normalized.data });
      } catch (err) {
        if (err instanceof ImageInputError) return responder.send(reply('error', text(`I could not use ${input.name}: ${err.message}`)));
        throw err;
      }
    }
    if (!question) question = DEFAULT_IMAGE_QUESTION;
    const sentChars = question.length;
    if (question.length > limits.maxMessageChars) question = question.slice(0, limits.maxMessageChars);
    const settings = history.settings(conversation);
    const budget = {
      contextLength: engine.info.contextLength,
      nVisualTokens: engine.info.nVisualTokens,
      maxWords: settings.maxWords,
      countTokens: (t: string) => engine.countTokens(t),
    };
    // Room for the question once its images, the answer and `Q: ...\nA:` are accounted for.
    const room = budget.contextLength - settings.maxWords - 1 - images.length * budget.nVisualTokens - (await engine.countTokens(questionText('')));
    if (room < 1) return responder.send(reply('error', text('Too many images for the model context; send fewer images at once.')));
    // Counted as the model will read it (typed special tokens are spelled out: plainUserText).
    const fitted = await fitText(question, room, (t) => budget.countTokens(plainUserText(t)));
    // One statement, whichever limit cut deeper.
    if (fitted.length < sentChars) {
      const why = fitted.length < question.length ? ', as much as fits in the model with its answer' : '';
      notes.push(`Your message was ${sentChars} characters; I read the first ${fitted.length}${why}.`);
    }
    question = fitted;
    const current: Turn = { role: 'user', text: question, images, at: message.receivedAt.getTime() };
    const started = Date.now();
    // History is read and written inside the job: the scheduler runs one job per conversation at
    // a time, so a message sent right after another sees the first one's question and answer.
    const result = await runJob(message, place, responder, {
      tokens: settings.maxWords,
      run: async (signal) => {
        const epoch = resets.get(conversation) ?? 0;
        const built = await buildPrompt(history.turns(conversation), current, budget);
        if (built.droppedTurns > 0) logger.debug({ conversation, dropped: built.droppedTurns }, 'older turns left out of the prompt');
        const r = await engine.chat(built.items, settings, { signal, onText: (t) => void responder.progress({ state: 'running', text: t }).catch(() => {}) });
        const answerText = r.historyText ?? r.segments.flatMap((s) => (s.type === 'text' ? [s.text] : [])).join(' ');
        // A reset while this answer was being written wins: the exchange is not brought back.
        if ((resets.get(conversation) ?? 0) === epoch) history.append(conversation, current, { role: 'bot', text: answerText, images: [], at: Date.now() });
        return r;
      },
    });
    if (!result) return;
    metrics?.countTokens(result.generatedTokens, (Date.now() - started) / 1000);
    const segments: Segment[] = [];
    if (notes.length) segments.push(text(`(${notes.join(' ')})`));
    segments.push(...result.segments);
    if (result.segments.length === 0) segments.push(text('(I had nothing to say to that.)'));
    await responder.send(reply('answer', ...segments));
  }

  /** Queues the work in the conversation's reserved place; on failure answers the user and returns undefined. */
  async function runJob<T>(
    message: IncomingMessage,
    place: Reservation,
    responder: Responder,
    work: { run: (signal: AbortSignal) => Promise<T>; tokens?: number },
  ): Promise<T | undefined> {
    const job = place.submit({
      ...work,
      trusted: TRUSTED_PLATFORMS.has(message.key.platform),
      onQueued: (position, etaSeconds) => void responder.progress({ state: 'queued', position, ...(etaSeconds === undefined ? {} : { etaSeconds }) }).catch(() => {}),
      onStart: () => void responder.typing().catch(() => {}),
    });
    try {
      return await job.result;
    } catch (err) {
      if (err instanceof SchedulerRejection) {
        metrics?.countError(err.reason);
        await responder.send(reply(err.reason === 'busy' || err.reason === 'rate-limited' ? 'busy' : 'error', text(err.message)));
        return undefined;
      }
      if (err instanceof EngineInputError || err instanceof ImageInputError || err instanceof PromptTooLongError) {
        metrics?.countError('input');
        await responder.send(reply('error', text(err.message)));
        return undefined;
      }
      // The in-process engine's worker died (crash, out of memory, watchdog) with this job in
      // flight; the next job starts a fresh one. Matched by name: the handler knows only the Engine contract.
      if (err instanceof Error && err.name === 'EngineWorkerError') {
        metrics?.countError('engine');
        logger.warn({ err: err.message, platform: message.key.platform }, 'a job was lost with the model worker');
        await responder.send(reply('error', text('The model stopped while answering this (it restarts by itself); please send your message again.')));
        return undefined;
      }
      throw err;
    }
  }

  return handle;
}
