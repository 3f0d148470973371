/**
 * The soak suite's bot: the real service (handler, scheduler, SQLite history) behind the real
 * Discord, Slack (HTTP mode) and web adapters, talking to the loopback fakes of Discord and
 * Slack, around whichever Engine a scenario needs (the fixture bundle's real engine, or a
 * deterministic double). Between the adapters and the service sits a thin seam that records
 * every message the service receives and every reply it sends back, so a test can count
 * answers per message; what the platforms finally saw is in the fakes' own records.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createDiscordAdapter } from '../../adapters/discord/index.ts';
import { createSlackAdapter, type SlackAdapter } from '../../adapters/slack/index.ts';
import { createWebAdapter, type WebAdapter } from '../../adapters/web/index.ts';
import { loadConfig, type Config } from '../../src/config.ts';
import { SqliteHistoryStore } from '../../src/conversation/history.ts';
import type { Adapter, IncomingMessage, MessageHandler, Reply, Responder } from '../../src/conversation/types.ts';
import { convertBundle } from '../../src/convert/convert.ts';
import type { ChatResult, Engine, GenerationSettings, PromptItem, RunOptions } from '../../src/model/engine-api.ts';
import { createLogger } from '../../src/log.ts';
import { Readiness, startHttp } from '../../src/service/http.ts';
import { createMetrics } from '../../src/service/metrics.ts';
import { startService, type RunningService } from '../../src/service/service.ts';
import { createFake } from '../discord/harness.ts';
import { APP_ID } from '../discord/fake-discord/payloads.ts';
import type { FakeDiscord } from '../discord/fake-discord/server.ts';
import { captureLogs } from '../discord/harness.ts';
import { BOT_TOKEN, FakeSlack } from '../slack/fake-slack.ts';
import { SIGNING_SECRET } from '../slack/harness.ts';

/** Every secret the suite configures; none may appear in anything the bot writes or serves. */
export const SECRETS = {
  DISCORD_TOKEN: 'soak-discord-token.NOT-A-REAL-ONE.4f9c2e71b0',
  SLACK_BOT_TOKEN: BOT_TOKEN,
  SLACK_SIGNING_SECRET: SIGNING_SECRET,
  HF_TOKEN: 'soak-hugging-face-token-7d1e5a93',
} as const;

/** Text that only a leaked secret could produce in an output. */
export function leakedSecrets(text: string): string[] {
  return Object.entries(SECRETS).flatMap(([name, value]) => (text.includes(value) ? [name] : []));
}

export interface SentReply {
  readonly kind: Reply['kind'];
  readonly text: string;
  readonly at: number;
}

/** One message as the service saw it, with what it answered. */
export interface Seen {
  readonly message: IncomingMessage;
  readonly arrivedAt: number;
  readonly replies: SentReply[];
  /** The handler returned (it never throws to the adapter). */
  finished: boolean;
  /** A reply the platform refused (the adapter threw from send). */
  deliveryErrors: string[];
}

export function replyText(reply: Reply): string {
  return reply.segments.map((s) => (s.type === 'text' ? s.text : `[${s.images.length} image(s)]`)).join(' ');
}

/** Converts the fixture checkpoints once per test file (a second or two on the tiny fixtures). */
export async function fixtureBundle(dir: string): Promise<string> {
  const out = join(dir, 'bundle');
  await convertBundle({
    optDir: 'test/fixtures/facebook/opt-6.7b',
    clipDir: 'test/fixtures/openai/clip-vit-large-patch14',
    fromageDir: 'test/fixtures/fromage_model',
    outDir: out,
    weights: 'fp32',
    progress: { silent: true },
  });
  return out;
}

/** The order in which the engine started answering, read from the tags in the questions. */
export class ObservedEngine implements Engine {
  readonly started: { question: string; at: number }[] = [];
  constructor(readonly inner: Engine) {}
  get info() {
    return this.inner.info;
  }
  countTokens(text: string): Promise<number> {
    return this.inner.countTokens(text);
  }
  chat(prompt: readonly PromptItem[], settings: GenerationSettings, options?: RunOptions): Promise<ChatResult> {
    const last = [...prompt].reverse().find((p) => p.type === 'text');
    this.started.push({ question: last?.type === 'text' ? last.text : '', at: performance.now() });
    return this.inner.chat(prompt, settings, options);
  }
  retrieve(query: string, count: number, options?: RunOptions) {
    this.started.push({ question: query, at: performance.now() });
    return this.inner.retrieve(query, count, options);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

export interface SoakBot {
  readonly discord: FakeDiscord;
  readonly slack: FakeSlack;
  readonly slackAdapter: SlackAdapter;
  readonly web: WebAdapter;
  readonly httpPort: number;
  readonly service: RunningService;
  readonly history: SqliteHistoryStore;
  readonly config: Config;
  readonly dataDir: string;
  readonly logLines: string[];
  readonly seen: Seen[];
  /** Queue waits (ms) of every job the scheduler started, from its observer. */
  readonly waits: number[];
  /** Unhandled rejections and uncaught exceptions of this process while the bot ran. */
  readonly crashes: string[];
  close(): Promise<void>;
}

export interface SoakBotOptions {
  readonly engine: Engine;
  readonly env?: Record<string, string>;
}

function observedAdapter(adapter: Adapter, observe: (m: IncomingMessage, r: Responder) => { responder: Responder; finish: () => void }): Adapter {
  const start = (handler: MessageHandler) =>
    adapter.start(async (message, responder) => {
      const o = observe(message, responder);
      try {
        await handler(message, o.responder);
      } finally {
        o.finish();
      }
    });
  return new Proxy(adapter, {
    get(target, prop) {
      if (prop === 'start') return start;
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

export async function startSoakBot(options: SoakBotOptions): Promise<SoakBot> {
  const dataDir = await mkdtemp(join(tmpdir(), 'fromage-soak-'));
  // Heartbeats every 5 s: under a CPU-starved run, discord.js would otherwise take a late
  // heartbeat ACK for a dead connection and resume, and this fake does not replay what it
  // dispatched meanwhile (Discord does), which would lose messages the bot never saw.
  const discord = createFake({ heartbeatIntervalMs: 5_000 });
  await discord.start();
  const slack = new FakeSlack();
  await slack.start();
  const config = loadConfig({
    ...SECRETS,
    DISCORD_APPLICATION_ID: APP_ID,
    DISCORD_API_BASE: discord.apiBase,
    SLACK_PORT: '3000',
    SLACK_API_URL: slack.apiUrl,
    FROMAGE_DATA_DIR: dataDir,
    FROMAGE_MAX_IMAGE_BYTES: String(256 * 1024),
    LOG_LEVEL: 'debug',
    ...options.env,
  });
  const { lines: logLines, sink } = captureLogs();
  const logger = createLogger(config, sink);
  const crashes: string[] = [];
  const onRejection = (err: unknown) => crashes.push(`unhandledRejection: ${String(err)}`);
  const onException = (err: unknown) => crashes.push(`uncaughtException: ${String(err)}`);
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);

  const seen: Seen[] = [];
  const observe = (message: IncomingMessage, responder: Responder) => {
    // The contract the adapters promise the service: a text is a string, whatever the platform sent.
    if (typeof message.text !== 'string') crashes.push(`the ${message.key.platform} adapter handed the service a ${typeof message.text} as text: ${JSON.stringify(message.text)}`);
    if (message.intent.kind === 'retrieve' && typeof message.intent.query !== 'string') crashes.push(`the ${message.key.platform} adapter handed the service a ${typeof message.intent.query} as a query`);
    const record: Seen = { message, arrivedAt: performance.now(), replies: [], finished: false, deliveryErrors: [] };
    seen.push(record);
    const wrapped: Responder = {
      async send(reply) {
        record.replies.push({ kind: reply.kind, text: replyText(reply), at: performance.now() });
        try {
          await responder.send(reply);
        } catch (err) {
          record.deliveryErrors.push(String(err));
          throw err;
        }
      },
      typing: () => responder.typing(),
      progress: (u) => responder.progress(u),
    };
    return { responder: wrapped, finish: () => (record.finished = true) };
  };

  const history = new SqliteHistoryStore(join(dataDir, 'history.sqlite'), { maxTurns: config.FROMAGE_HISTORY_TURNS });
  const discordAdapter = createDiscordAdapter(config, logger.child({ platform: 'discord' }), { timing: { progressIntervalMs: 500, typingIntervalMs: 2000 }, downloadTimeoutMs: 2000 });
  const slackAdapter = createSlackAdapter(config, logger.child({ platform: 'slack' }), {
    listen: { host: '127.0.0.1', port: 0 },
    clientOptions: { retryConfig: { retries: 0 } },
    statusIntervalMs: 500,
  });
  const web = createWebAdapter({
    host: '127.0.0.1',
    port: 0,
    storePath: join(dataDir, 'web.sqlite'),
    maxImagesPerMessage: config.FROMAGE_MAX_IMAGES_PER_MESSAGE,
    maxImageBytes: config.FROMAGE_MAX_IMAGE_BYTES,
    history,
    logger: logger.child({ platform: 'web' }),
  });
  const metrics = createMetrics({ defaultMetrics: true });
  const waits: number[] = [];
  const jobStarted = metrics.schedulerObserver.jobStarted;
  const observedMetrics = { ...metrics, schedulerObserver: { ...metrics.schedulerObserver, jobStarted: (ms: number) => (waits.push(ms), jobStarted?.(ms)) } };
  const readiness = new Readiness();
  const http = await startHttp(0, metrics.registry, readiness);
  const address = http.address();
  const httpPort = typeof address === 'object' && address ? address.port : 0;
  const service = await startService({
    config,
    logger,
    engine: options.engine,
    adapters: [discordAdapter, slackAdapter, web].map((a) => observedAdapter(a, observe)),
    history,
    shutdownGraceMs: 5_000,
    early: { http, metrics: observedMetrics, readiness },
  });
  return {
    discord,
    slack,
    slackAdapter,
    web,
    httpPort,
    service,
    history,
    config,
    dataDir,
    logLines,
    seen,
    waits,
    crashes,
    async close() {
      await service.stop();
      await discord.close();
      await slack.stop();
      process.off('unhandledRejection', onRejection);
      process.off('uncaughtException', onException);
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Waits until `check` holds, polling; throws with `what` after `timeoutMs`. */
export async function until(check: () => boolean, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Everything a platform received from the bot as text, for the mention and secret scans. */
export function platformOutputs(bot: SoakBot): string[] {
  const discord = bot.discord.requests.map((r) => JSON.stringify(r.body ?? r.json ?? ''));
  const slack = bot.slack.calls.map((c) => JSON.stringify(c.args));
  const responses = [...bot.slack.responses.values()].flat().map((r) => JSON.stringify(r));
  return [...discord, ...slack, ...responses];
}

/**
 * Everything the web chat shows a page, as the page gets it over HTTP: the conversation list,
 * each conversation's transcript, and its saved (exported) HTML file.
 */
export async function webPages(webUrl: string, headers: Record<string, string> = {}): Promise<string[]> {
  const get = (path: string) => fetch(`${webUrl}${path}`, { headers }).then((r) => r.text());
  const list = await get('api/conversations');
  const ids = ((JSON.parse(list) as { conversations?: { id: string }[] }).conversations ?? []).map((c) => c.id);
  const pages = await Promise.all(ids.map(async (id) => [await get(`api/conversations/${id}`), await get(`api/conversations/${id}/export`)]));
  return [list, ...pages.flat()];
}

/**
 * Every place a configured secret could leak to: log lines, replies the service sent, what
 * the platforms received (bodies, not the Authorization headers that must carry the tokens),
 * what the web chat's pages show, and the /healthz and /metrics pages. Returns "where: NAME"
 * for each leak.
 */
export async function secretLeaks(bot: SoakBot): Promise<string[]> {
  const health = await fetch(`http://127.0.0.1:${bot.httpPort}/healthz`).then((r) => r.text());
  const metrics = await fetch(`http://127.0.0.1:${bot.httpPort}/metrics`).then((r) => r.text());
  const places: [string, string][] = [
    ['logs', bot.logLines.join('\n')],
    ['replies', bot.seen.flatMap((s) => s.replies.map((r) => r.text)).join('\n')],
    ['platform posts', platformOutputs(bot).join('\n')],
    ['web chat pages', (await webPages(bot.web.url!)).join('\n')],
    ['/healthz', health],
    ['/metrics', metrics],
  ];
  return places.flatMap(([where, text]) => leakedSecrets(text).map((name) => `${where}: ${name}`));
}

/** Percentile of a list of numbers (nearest rank). */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}
