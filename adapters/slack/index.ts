/**
 * The Slack adapter: Bolt in Socket Mode (default) or HTTP mode, turning mentions, DMs and
 * `/fromage` commands into `IncomingMessage`s and rendering replies in the thread.
 */
import type { AddressInfo } from 'node:net';
import type { App } from '@slack/bolt';
import type { SlackConfig } from './config.ts';
import type { AdapterLogger } from '../../src/conversation/logger.ts';
import type { Adapter, IncomingMessage, MessageHandler, Responder } from '../../src/conversation/types.ts';
import { boltLogger, createBoltApp, slackMode } from './bolt-app.ts';
import { RecentKeys } from './dedupe.ts';
import { tokenOrigins } from './file-download.ts';
import type { SlackImageDeps } from './images.ts';
import { messageIdentity, routeMessageEvent } from './incoming.ts';
import { parseSlashText } from './intents.ts';
import { escapeMrkdwn } from './mrkdwn.ts';
import { eventEnvelopeSchema, messageEventSchema, slashCommandSchema } from './payloads.ts';
import { SlackResponder, type Ephemeral } from './responder.ts';
import { createWebClient, slackErrorCode, webApi, webClientOptions, type SlackApi, type WebClientOptions } from './web-api.ts';
import { UserFacingError } from '../../src/conversation/errors.ts';

export interface SlackAdapterOptions {
  /** Layered over the Web API client defaults (tests turn retries off). */
  readonly clientOptions?: WebClientOptions;
  /** HTTP mode: where to listen instead of SLACK_PORT on all interfaces (tests: 127.0.0.1, port 0). */
  readonly listen?: { readonly host?: string; readonly port: number };
  readonly statusIntervalMs?: number;
  /** How long `start` may try to reach Slack before it gives up with a message (default 30 s). */
  readonly startTimeoutMs?: number;
}

const DEFAULT_START_TIMEOUT_MS = 30_000;
/** One request while starting; a network that drops packets otherwise waits forever. */
const START_REQUEST_TIMEOUT_MS = 10_000;

export interface SlackAdapter extends Adapter {
  /** HTTP mode: the port the events receiver listens on, once started. */
  readonly httpPort: number | undefined;
  /** Resolves when every handler started so far has finished (tests; graceful shutdown). */
  idle(): Promise<void>;
}

export function createSlackAdapter(config: SlackConfig, logger: AdapterLogger, options: SlackAdapterOptions = {}): SlackAdapter {
  return new BoltSlackAdapter(config, logger.child({ adapter: 'slack' }), options);
}

function hostOf(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}

/** The low-level cause (ECONNREFUSED, ENOTFOUND, a timeout) rather than "fetch failed". */
function describeNetworkError(err: unknown): string {
  let e: unknown = err;
  const parts: string[] = [];
  for (let depth = 0; e instanceof Error && depth < 4; depth++) {
    const code = (e as Error & { code?: unknown }).code;
    parts.push(typeof code === 'string' && !parts.includes(code) ? `${code}` : e.message);
    e = (e as Error & { cause?: unknown }).cause ?? (e as Error & { original?: unknown }).original;
  }
  const text = parts.filter(Boolean).join(': ');
  return text.length > 0 ? text.slice(0, 200) : String(err);
}

const HANDLER_FAILED =
  'Something went wrong while I was answering. The error was logged; please try again, or tell whoever runs me if it keeps happening.';

type SlashRespond = (message: { response_type: 'ephemeral'; text: string }) => Promise<unknown>;

class BoltSlackAdapter implements SlackAdapter {
  readonly platform = 'slack' as const;
  httpPort: number | undefined;
  private app: App | undefined;
  private api: SlackApi | undefined;
  private handler: MessageHandler | undefined;
  private teamId = '';
  private botUserId: string | undefined;
  private imageDeps: SlackImageDeps | undefined;
  private readonly eventIds = new RecentKeys();
  private readonly messageIds = new RecentKeys();
  private readonly inFlight = new Set<Promise<void>>();

  constructor(
    private readonly config: SlackConfig,
    private readonly log: AdapterLogger,
    private readonly options: SlackAdapterOptions,
  ) {}

  async start(handler: MessageHandler): Promise<void> {
    const token = this.config.SLACK_BOT_TOKEN;
    if (!token) throw new UserFacingError('SLACK_BOT_TOKEN is not set: copy the Bot User OAuth Token (xoxb-...) from your Slack app.');
    const mode = slackMode(this.config);
    const clientOptions = webClientOptions(this.config.SLACK_API_URL, { logger: boltLogger(this.log), ...this.options.clientOptions });
    const startDeadline = Date.now() + (this.options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS);
    const auth = await this.checkToken(token, clientOptions, startDeadline);
    this.handler = handler;
    this.teamId = auth.team_id ?? '';
    this.botUserId = auth.user_id;
    this.api = webApi(createWebClient(token, clientOptions));
    const api = this.api;
    this.imageDeps = {
      token,
      allowedOrigins: tokenOrigins(this.config.SLACK_API_URL),
      maxImageBytes: this.config.FROMAGE_MAX_IMAGE_BYTES,
      fileInfo: (id) => api.fileInfo(id),
    };

    const app = createBoltApp({ botToken: token, botId: auth.bot_id, botUserId: auth.user_id, mode, clientOptions, logger: this.log });
    app.event('app_mention', async ({ event, body, context }) => this.onMessageEvent(event, body, context.retryNum));
    app.event('message', async ({ event, body, context }) => this.onMessageEvent(event, body, context.retryNum));
    // Any command routed to this app: the manifest names it /fromage, but a workspace may rename it.
    app.command(/^\/.+/, async ({ command, ack, respond }) => {
      await ack();
      await this.onSlashCommand(command, respond);
    });
    app.error(async (err) => {
      this.log.error({ err }, 'slack: unhandled error in an event listener');
    });
    this.app = app;

    if (mode.kind === 'http') {
      const listen = this.options.listen ?? { port: mode.port };
      const server = await app.start({ port: listen.port, host: listen.host });
      this.httpPort = (server.address() as AddressInfo).port;
      this.log.info({ port: this.httpPort }, 'slack: HTTP mode, receiving events at /slack/events');
    } else {
      // Bolt's socket client retries an unreachable Slack for ever; starting has a deadline.
      let timer: NodeJS.Timeout | undefined;
      const waitMs = Math.max(1000, startDeadline - Date.now());
      const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), waitMs)));
      try {
        const outcome = await Promise.race([app.start().then(() => 'connected' as const), timedOut]);
        if (outcome === 'timeout') {
          await app.stop().catch(() => undefined);
          throw new UserFacingError(
            `Socket Mode did not connect to Slack within ${Math.round(waitMs / 1000)} s (through ${hostOf(this.config.SLACK_API_URL)}, then Slack's WebSocket server): check the network (a firewall or proxy blocking wss://), SLACK_APP_TOKEN, and SLACK_API_URL.`,
          );
        }
      } catch (err) {
        if (err instanceof UserFacingError) throw err;
        const code = slackErrorCode(err) ?? (err as Error).message;
        throw new UserFacingError(`Socket Mode could not connect (${code}): check SLACK_APP_TOKEN, an app-level token with connections:write, and that Socket Mode is enabled for the app.`, { cause: err });
      } finally {
        clearTimeout(timer);
      }
      this.log.info('slack: connected in Socket Mode');
    }
  }

  /**
   * auth.test, retried with a visible backoff while Slack cannot be reached, until the deadline;
   * a rejected token fails at once. The service's normal retry policy would wait minutes, silently.
   */
  private async checkToken(token: string, clientOptions: WebClientOptions, deadline: number) {
    const host = hostOf(this.config.SLACK_API_URL);
    let delayMs = 1000;
    for (let attempt = 1; ; attempt++) {
      const timeout = Math.max(1000, Math.min(START_REQUEST_TIMEOUT_MS, deadline - Date.now()));
      const client = createWebClient(token, { ...clientOptions, retryConfig: { retries: 0 }, timeout });
      try {
        return await client.auth.test();
      } catch (err) {
        const code = slackErrorCode(err);
        if (code) throw new UserFacingError(`Slack rejected SLACK_BOT_TOKEN (${code}): copy the Bot User OAuth Token again from OAuth & Permissions.`, { cause: err });
        const reason = describeNetworkError(err);
        const left = deadline - Date.now();
        if (left <= delayMs)
          throw new UserFacingError(
            `Could not reach Slack at ${host} after ${attempt} attempt${attempt === 1 ? '' : 's'} (${reason}): check the network (DNS, a firewall or proxy), or SLACK_API_URL if it points elsewhere (now ${this.config.SLACK_API_URL}).`,
            { cause: err },
          );
        this.log.warn(`slack: cannot reach ${host} (${reason}); trying again in ${Math.round(delayMs / 1000)} s (giving up in ${Math.round(left / 1000)} s)`);
        await new Promise((r) => setTimeout(r, delayMs));
        delayMs = Math.min(delayMs * 2, 8000);
      }
    }
  }

  async stop(): Promise<void> {
    const app = this.app;
    this.app = undefined;
    if (!app) return;
    try {
      await app.stop();
    } catch (err) {
      this.log.warn({ err }, 'slack: error while stopping the receiver');
    }
  }

  async idle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  private onMessageEvent(rawEvent: unknown, rawBody: unknown, retryNum: number | undefined): void {
    const parsed = messageEventSchema.safeParse(rawEvent);
    if (!parsed.success || !this.api || !this.imageDeps) return;
    const event = parsed.data;
    const eventId = eventEnvelopeSchema.safeParse(rawBody).data?.event_id ?? undefined;
    if (eventId && !this.eventIds.firstSighting(eventId)) {
      this.log.info({ eventId, retryNum }, 'slack: repeated delivery of an event ignored');
      return;
    }
    const routed = routeMessageEvent(event, { teamId: this.teamId, botUserId: this.botUserId, images: this.imageDeps });
    if (!routed) return;
    if (!this.messageIds.firstSighting(messageIdentity(event))) {
      this.log.debug({ eventId, type: event.type }, 'slack: message already received through another event');
      return;
    }
    const responder = new SlackResponder(this.api, routed.destination, { logger: this.log, statusIntervalMs: this.options.statusIntervalMs });
    this.dispatch(routed.message, responder);
  }

  private async onSlashCommand(rawCommand: unknown, respond: SlashRespond): Promise<void> {
    const parsed = slashCommandSchema.safeParse(rawCommand);
    if (!parsed.success || !this.api) return;
    const cmd = parsed.data;
    const ephemeral: Ephemeral = async (text) => {
      await respond({ response_type: 'ephemeral', text });
    };
    const quietly = (text: string) =>
      ephemeral(text).catch((err: unknown) => this.log.warn({ err }, 'slack: could not answer through response_url'));
    const command = parseSlashText(cmd.command, cmd.text);
    if (!command.ok) {
      await quietly(command.message);
      return;
    }
    let headline: string | undefined;
    if (command.intent.kind === 'retrieve') {
      await quietly(`:mag: Looking for “${escapeMrkdwn(command.text)}”…`);
      headline = `<@${cmd.user_id}> asked for \`${cmd.command} retrieve\` ${escapeMrkdwn(command.text)}`;
    }
    const dm = cmd.channel_id.startsWith('D') || cmd.channel_name === 'directmessage';
    const message: IncomingMessage = {
      key: { platform: 'slack', workspace: dm ? 'dm' : cmd.team_id, channel: cmd.channel_id },
      id: cmd.trigger_id,
      author: { id: cmd.user_id, name: cmd.user_name ?? cmd.user_id },
      text: command.text,
      images: [],
      intent: command.intent,
      receivedAt: new Date(),
    };
    const responder = new SlackResponder(this.api, { channel: cmd.channel_id }, { logger: this.log, ephemeral, headline, statusIntervalMs: this.options.statusIntervalMs });
    this.dispatch(message, responder);
  }

  /** Runs the handler detached: Bolt must return quickly, and answers can take minutes. */
  private dispatch(message: IncomingMessage, responder: Responder): void {
    const handler = this.handler;
    if (!handler) return;
    const run: Promise<void> = handler(message, responder)
      .catch(async (err: unknown) => {
        this.log.error({ err, conversation: message.key }, 'slack: the message handler failed');
        await responder.send({ kind: 'error', segments: [{ type: 'text', text: HANDLER_FAILED }] }).catch(() => undefined);
      })
      .finally(() => this.inFlight.delete(run));
    this.inFlight.add(run);
  }
}
