/**
 * The Discord adapter: a discord.js client that turns mentions, DMs, replies to the bot and
 * `/fromage` commands into `IncomingMessage`s, and answers through Discord `Responder`s.
 * Access control, the settings permission and image checks happen here, before the service
 * sees anything; Discord API failures are logged once and never crash the process.
 */
import { once } from 'node:events';
import {
  Client,
  Events,
  GatewayIntentBits,
  MessageFlags,
  Partials,
  type ChatInputCommandInteraction,
  type Interaction,
  type Message,
} from 'discord.js';
import type { DiscordConfig } from './config.ts';
import type { AdapterLogger } from '../../src/conversation/logger.ts';
import type { Adapter, IncomingMessage, MessageHandler } from '../../src/conversation/types.ts';
import { conversationId } from '../../src/conversation/key.ts';
import { accessRulesFromConfig, isAllowed, type AccessRules } from './access.ts';
import { HandoffOrder } from './arrival-order.ts';
import { parseApiBase } from './api-base.ts';
import { ErrorReporter } from './errors.ts';
import { collectImages, type AttachmentInfo, type ImageLimits } from './images.ts';
import { cleanText, conversationKeyFor, imageCandidates, isAddressedToBot, placeOfMessage } from './incoming.ts';
import {
  DEFAULT_TIMING,
  InteractionResponder,
  MessageResponder,
  NO_MENTIONS,
  type DiscordResponder,
  type ResponderTiming,
} from './responder.ts';
import { mayChangeSettings, memberRoleIds, parseFromageCommand, type ParsedCommand } from './slash.ts';
import { UserFacingError } from '../../src/conversation/errors.ts';

export interface DiscordAdapterOptions {
  /** Progress-edit and typing cadence; tests shorten them. */
  readonly timing?: Partial<ResponderTiming>;
  /** Deadline for downloading one attachment. */
  readonly downloadTimeoutMs?: number;
  /** Deadline for the gateway to become ready in `start`. */
  readonly readyTimeoutMs?: number;
}

/** Guilds, messages, DMs; MessageContent only matters for replies to the bot without a mention. */
const INTENTS: GatewayIntentBits[] = [
  GatewayIntentBits.Guilds,
  GatewayIntentBits.GuildMessages,
  GatewayIntentBits.DirectMessages,
  GatewayIntentBits.MessageContent,
];

const EMPTY_MESSAGE_HINT =
  'Mention me with a question or an image, or use `/fromage help`. ' +
  '(If you replied to me without mentioning me, the bot owner needs to enable the Message Content intent.)';

const INTERNAL_ERROR = 'Something went wrong on my side while answering. Please try again later.';

/** A user-facing configuration error (printed without a stack trace by the CLI). */
function userFacing(message: string): Error {
  return new UserFacingError(message);
}

export function createDiscordAdapter(config: DiscordConfig, logger: AdapterLogger, options: DiscordAdapterOptions = {}): Adapter {
  if (!config.DISCORD_TOKEN) throw userFacing('DISCORD_TOKEN is not set: copy the bot token from the Discord developer portal (Bot > Reset Token) into .env');
  return new DiscordAdapter(config, config.DISCORD_TOKEN, logger.child({ adapter: 'discord' }), options);
}

class DiscordAdapter implements Adapter {
  readonly platform = 'discord' as const;
  private client: Client | null = null;
  private readonly rules: AccessRules;
  private readonly reporter: ErrorReporter;
  private readonly timing: ResponderTiming;
  private readonly limits: ImageLimits;
  private readonly handoffs = new HandoffOrder();

  constructor(
    private readonly config: DiscordConfig,
    private readonly token: string,
    private readonly logger: AdapterLogger,
    private readonly options: DiscordAdapterOptions,
  ) {
    this.rules = accessRulesFromConfig(config);
    this.reporter = new ErrorReporter(logger);
    this.timing = { ...DEFAULT_TIMING, maxTypingMs: config.FROMAGE_JOB_TIMEOUT_S * 1000, ...options.timing };
    this.limits = {
      maxBytes: config.FROMAGE_MAX_IMAGE_BYTES,
      maxCount: config.FROMAGE_MAX_IMAGES_PER_MESSAGE,
      timeoutMs: options.downloadTimeoutMs ?? 30_000,
    };
  }

  async start(handler: MessageHandler): Promise<void> {
    if (this.client) throw new Error('the Discord adapter is already started');
    try {
      this.client = await this.connect(handler, INTENTS);
    } catch (err) {
      if (!isDisallowedIntents(err)) throw explainLoginError(err, this.config.DISCORD_API_BASE);
      // Message Content is privileged and off by default in the portal. Mentions and DMs carry
      // their text without it, so run without it rather than not at all.
      this.logger.warn(
        'discord: the Message Content intent is not enabled for this bot; replies to the bot without a mention will be ignored. ' +
          'Enable it in the developer portal (Bot > Privileged Gateway Intents > Message Content Intent) to follow reply chains.',
      );
      try {
        this.client = await this.connect(handler, INTENTS.filter((i) => i !== GatewayIntentBits.MessageContent));
      } catch (retryErr) {
        throw explainLoginError(retryErr, this.config.DISCORD_API_BASE);
      }
    }
    this.logger.info({ user: this.client.user?.tag, guilds: this.client.guilds.cache.size }, 'discord: connected');
  }

  /** Logs in and resolves once the gateway is ready; destroys the client on failure. */
  private async connect(handler: MessageHandler, intents: GatewayIntentBits[]): Promise<Client> {
    const base = parseApiBase(this.config.DISCORD_API_BASE);
    const client = new Client({
      intents,
      // DM channels are not cached before their first message; without this their messages are dropped.
      partials: [Partials.Channel],
      // REST under DISCORD_API_BASE; @discordjs/ws asks it for GET /gateway/bot, so the gateway follows.
      rest: { api: base.api, ...(base.version ? { version: base.version } : {}) },
      ...(base.version ? { ws: { version: Number(base.version) } } : {}),
      allowedMentions: NO_MENTIONS,
      // Reply even when the user deleted their message meanwhile.
      failIfNotExists: false,
    });
    // An event handler must never reject: an unhandled rejection would take the process down.
    client.on(Events.MessageCreate, (m) => void this.onMessage(m, handler).catch((err: unknown) => this.logUnexpected(err, 'message', m.id)));
    client.on(Events.InteractionCreate, (i) =>
      void this.onInteraction(i, handler).catch((err: unknown) => this.logUnexpected(err, 'interaction', i.id)),
    );
    client.on(Events.Error, (err) => this.logger.error({ err: err.message }, 'discord: client error'));
    client.on(Events.Warn, (message) => this.logger.warn(`discord: ${message}`));
    client.on(Events.ShardDisconnect, (event, shard) => this.logger.warn({ code: event.code, shard }, 'discord: gateway closed and will not reconnect'));
    client.on(Events.ShardReconnecting, (shard) => this.logger.info({ shard }, 'discord: gateway reconnecting'));

    const ready = once(client, Events.ClientReady, { signal: AbortSignal.timeout(this.options.readyTimeoutMs ?? 60_000) });
    // If login fails first, the pending wait rejects later on its own; nobody awaits it then.
    ready.catch(() => undefined);
    try {
      await client.login(this.token);
      await ready;
    } catch (err) {
      await client.destroy().catch(() => undefined);
      throw err;
    }
    return client;
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = null;
    if (client) await client.destroy();
  }

  private async onMessage(message: Message, handler: MessageHandler): Promise<void> {
    const botId = message.client.user.id;
    if (!isAddressedToBot(message, botId)) return;
    const place = placeOfMessage(message);
    const roleIds = message.member ? [...message.member.roles.cache.keys()] : [];
    if (!isAllowed(this.rules, { guildId: place.guildId, channelId: place.channelId, parentId: place.threadParentId, roleIds })) {
      this.logger.debug({ channel: place.channelId, user: message.author.id }, 'discord: message outside the allow-lists ignored');
      return;
    }
    const key = conversationKeyFor(place);
    const { turn, handedOff } = this.handoffs.arrive(conversationId(key));
    try {
      const responder = new MessageResponder(message, this.reporter, this.timing);
      const { images, notes } = await collectImages(imageCandidates(message), this.limits);
      const text = cleanText(message, botId);
      await turn;
      if (notes.length > 0) await responder.notify(notes.join('\n'));
      if (text === '' && images.length === 0) {
        // Nothing left to answer: the notes said why, or the message really was empty.
        if (notes.length === 0) await responder.notify(EMPTY_MESSAGE_HINT);
        return;
      }
      const incoming: IncomingMessage = {
        key,
        id: message.id,
        author: { id: message.author.id, name: message.member?.displayName ?? message.author.displayName },
        text,
        images,
        intent: { kind: 'chat' },
        replyTo: message.reference?.messageId,
        receivedAt: message.createdAt,
      };
      const answered = this.runHandler(handler, incoming, responder);
      handedOff();
      await answered;
    } finally {
      handedOff();
    }
  }

  private async onInteraction(interaction: Interaction, handler: MessageHandler): Promise<void> {
    if (!interaction.isChatInputCommand()) return;
    const where = `interaction ${interaction.id}`;
    const refuse = (content: string) =>
      interaction
        .reply({ content, flags: MessageFlags.Ephemeral, allowedMentions: NO_MENTIONS })
        .then(() => undefined, (err: unknown) => void this.reporter.report(err, where, 'refuse command'));

    let parsed: ParsedCommand | null;
    try {
      parsed = parseFromageCommand(interaction);
    } catch (err) {
      // discord.js throws for a required option that is missing or an option of another type (a
      // registration older or newer than this code); unanswered, Discord says "did not respond".
      this.logger.warn({ err: err instanceof Error ? err.message : String(err), interaction: interaction.id }, 'discord: a command whose options this bot cannot read');
      return refuse('I could not read this command: an option is missing or has the wrong type. The bot owner should run `npm run discord:register` again; `/fromage help` shows what I can do.');
    }
    if (!parsed) return refuse('I do not know this command. The bot owner should run `npm run discord:register` again.');
    const threadParentId = interaction.channel?.isThread() ? interaction.channel.parentId : null;
    const channelId = interaction.channelId ?? 'unknown';
    const roleIds = memberRoleIds(interaction.member);
    if (!isAllowed(this.rules, { guildId: interaction.guildId, channelId, parentId: threadParentId, roleIds }))
      return refuse('I am not enabled here. Ask a server admin to allow this channel or your role.');
    const changesSettings = parsed.intent.kind === 'settings' && (Object.keys(parsed.intent.changes).length > 0 || parsed.intent.reset === true);
    if (changesSettings && !mayChangeSettings(interaction, this.config.DISCORD_SETTINGS_ROLE)) {
      const role = this.config.DISCORD_SETTINGS_ROLE ? ` or the ${this.config.DISCORD_SETTINGS_ROLE} role` : '';
      return refuse(`Changing settings needs the Manage Server permission${role}. Run \`/fromage settings\` without options to see the current settings.`);
    }

    const key = conversationKeyFor({ guildId: interaction.guildId, channelId, threadParentId });
    const { turn, handedOff } = this.handoffs.arrive(conversationId(key));
    try {
      // Acknowledge within Discord's 3-second window before any download or queueing.
      try {
        await interaction.deferReply(parsed.ephemeral ? { flags: MessageFlags.Ephemeral } : {});
      } catch (err) {
        this.reporter.report(err, where, 'defer reply');
        return;
      }
      const responder = new InteractionResponder(interaction, this.reporter, this.timing, parsed.ephemeral);
      const collected = parsed.attachment ? await collectImages([parsed.attachment satisfies AttachmentInfo], this.limits) : { images: [], notes: [] };
      await turn;
      if (collected.notes.length > 0) await responder.notify(collected.notes.join('\n'));
      const incoming: IncomingMessage = {
        key,
        id: interaction.id,
        author: { id: interaction.user.id, name: displayNameOf(interaction) },
        text: parsed.text,
        images: collected.images,
        intent: parsed.intent,
        receivedAt: interaction.createdAt,
      };
      const answered = this.runHandler(handler, incoming, responder);
      handedOff();
      await answered;
    } finally {
      handedOff();
    }
  }

  private logUnexpected(err: unknown, what: string, id: string): void {
    this.logger.error({ err: err instanceof Error ? err.stack : String(err), [what]: id }, `discord: failed to process a ${what}`);
  }

  /** The service handles its own errors; this is the last line so one bad message never crashes the bot. */
  private async runHandler(handler: MessageHandler, incoming: IncomingMessage, responder: DiscordResponder): Promise<void> {
    try {
      await handler(incoming, responder);
    } catch (err) {
      this.logger.error({ err: err instanceof Error ? err.stack : String(err), message: incoming.id }, 'discord: handler failed');
      await responder.send({ kind: 'error', segments: [{ type: 'text', text: INTERNAL_ERROR }] });
    }
  }
}

function displayNameOf(interaction: ChatInputCommandInteraction): string {
  const member = interaction.member;
  if (member && 'displayName' in member) return member.displayName;
  return interaction.user.displayName;
}

function isDisallowedIntents(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  return (err as Error & { code?: unknown }).code === 'DisallowedIntents' || /disallowed intents/i.test(err.message);
}

/** Login failures in terms of what to fix. */
function explainLoginError(err: unknown, apiBase: string): Error {
  const e = err instanceof Error ? err : new Error(String(err));
  const code = (e as Error & { code?: unknown }).code;
  if (code === 'TokenInvalid' || /401|Unauthorized/.test(e.message))
    return userFacing('Discord rejected DISCORD_TOKEN: reset the bot token in the developer portal (Bot > Reset Token) and put the new one in .env');
  if (isDisallowedIntents(e))
    return userFacing('Discord refused the gateway intents (Guilds, Guild Messages, Direct Messages); check the application in the developer portal');
  if (e.name === 'AbortError' || e.name === 'TimeoutError')
    return userFacing(`The Discord gateway did not become ready in time (API base ${apiBase}); check the network and DISCORD_API_BASE`);
  return userFacing(`Could not connect to Discord at ${apiBase}: ${e.message}`);
}
