/**
 * `Responder`s for Discord: one answering a channel message (replies, a queue-position message
 * edited in place, typing renewed while the job runs) and one answering a slash command (the
 * deferred "thinking..." reply is edited into progress and then into the answer; errors are
 * ephemeral). Every Discord call is guarded: a failure is logged once and never reaches the
 * service as an exception.
 */
import { AttachmentBuilder, MessageFlags, type ChatInputCommandInteraction, type Message, type MessageCreateOptions } from 'discord.js';
import type { Progress, Reply, ReplyImage, Responder } from '../../src/conversation/types.ts';
import { showControlCharacters } from '../../src/conversation/text.ts';
import { classifyDiscordError, type DiscordFailure, type ErrorReporter } from './errors.ts';
import { renderReply, replyText, type OutgoingMessage } from './render.ts';
import { DEFAULT_UPLOAD_LIMIT, fitToUploadLimit } from './upload.ts';
import { LatestValueThrottle } from './throttle.ts';

/** The bot never pings anyone, not even the person it replies to. */
export const NO_MENTIONS = { parse: [], repliedUser: false } as const;

export interface ResponderTiming {
  /** Minimum time between two edits of the progress message (Discord rate-limits edits). */
  readonly progressIntervalMs: number;
  /** Discord shows "typing" for 10 s after each call. */
  readonly typingIntervalMs: number;
  /** Stop renewing typing after this long even if no answer came (the job timed out upstream). */
  readonly maxTypingMs: number;
}

export const DEFAULT_TIMING: ResponderTiming = { progressIntervalMs: 1000, typingIntervalMs: 8000, maxTypingMs: 300_000 };

/** A Responder that can also post a short notice about the user's input (skipped images). */
export interface DiscordResponder extends Responder {
  notify(text: string): Promise<void>;
}

interface Payload {
  content?: string;
  files: AttachmentBuilder[];
}

/** Failures after which nothing more can be posted through this responder. */
const FATAL: ReadonlySet<DiscordFailure> = new Set(['expired-interaction', 'unknown-channel', 'missing-access']);

export function queuedText(position: number, etaSeconds?: number): string {
  const eta = etaSeconds === undefined ? '' : etaSeconds < 60 ? ` (about ${Math.max(1, Math.round(etaSeconds))} s)` : ` (about ${Math.round(etaSeconds / 60)} min)`;
  return position <= 1 ? `⏳ You are next in the queue${eta}.` : `⏳ You are number ${position} in the queue${eta}.`;
}

abstract class BaseResponder implements DiscordResponder {
  private typingTimer: NodeJS.Timeout | null = null;
  private typingStarted = 0;
  private throttle: LatestValueThrottle<string>;
  protected dead = false;

  constructor(
    protected readonly reporter: ErrorReporter,
    protected readonly where: string,
    protected readonly timing: ResponderTiming,
  ) {
    this.throttle = this.newThrottle();
  }

  protected abstract showProgress(text: string): Promise<void>;
  protected abstract hasProgress(): boolean;
  protected abstract sendTypingOnce(): Promise<void>;
  protected abstract deliver(reply: Reply): Promise<void>;
  protected abstract postNotice(text: string): Promise<void>;

  async send(reply: Reply): Promise<void> {
    this.stopTyping();
    // Let an edit already on its way land first, so it cannot overwrite the answer.
    await this.throttle.cancel();
    this.throttle = this.newThrottle();
    await this.guard('send reply', () => this.deliver(reply));
  }

  async typing(): Promise<void> {
    if (this.typingTimer || this.dead) return;
    this.typingStarted = Date.now();
    this.typingTimer = setInterval(() => {
      if (Date.now() - this.typingStarted > this.timing.maxTypingMs) this.stopTyping();
      else void this.guard('typing', () => this.sendTypingOnce());
    }, this.timing.typingIntervalMs);
    this.typingTimer.unref();
    await this.guard('typing', () => this.sendTypingOnce());
  }

  async progress(update: Progress): Promise<void> {
    if (update.state === 'queued') {
      this.throttle.push(queuedText(update.position, update.etaSeconds));
      return;
    }
    await this.typing();
    if (update.text) this.throttle.push(showControlCharacters(update.text));
    else if (this.hasProgress()) this.throttle.push('⚙️ Working on it…');
  }

  async notify(text: string): Promise<void> {
    await this.guard('post notice', () => this.postNotice(text));
  }

  protected stopTyping(): void {
    if (this.typingTimer) clearInterval(this.typingTimer);
    this.typingTimer = null;
  }

  protected async guard(action: string, call: () => Promise<void>): Promise<void> {
    if (this.dead) return;
    try {
      await call();
    } catch (err) {
      const failure = this.reporter.report(err, this.where, action);
      if (FATAL.has(failure)) {
        this.dead = true;
        this.stopTyping();
      }
    }
  }

  private newThrottle(): LatestValueThrottle<string> {
    return new LatestValueThrottle((text) => this.guard('update progress', () => this.showProgress(text)), this.timing.progressIntervalMs);
  }
}

/** Answers a message in a guild channel, thread or DM. */
export class MessageResponder extends BaseResponder {
  private progressMessage: Message | null = null;

  constructor(
    private readonly message: Message,
    reporter: ErrorReporter,
    timing: ResponderTiming,
    private readonly uploadLimit = DEFAULT_UPLOAD_LIMIT,
  ) {
    super(reporter, `channel ${message.channelId}`, timing);
  }

  protected hasProgress(): boolean {
    return this.progressMessage !== null;
  }

  protected async showProgress(text: string): Promise<void> {
    if (this.progressMessage) await this.progressMessage.edit({ content: text, allowedMentions: NO_MENTIONS });
    else this.progressMessage = await this.message.reply({ content: text, allowedMentions: NO_MENTIONS });
  }

  protected async sendTypingOnce(): Promise<void> {
    const channel = this.message.channel;
    if ('sendTyping' in channel) await channel.sendTyping();
  }

  protected async postNotice(text: string): Promise<void> {
    await this.message.reply({ content: text, allowedMentions: NO_MENTIONS });
  }

  protected async deliver(reply: Reply): Promise<void> {
    const messages = await prepareMessages(reply, this.uploadLimit);
    for (const [i, out] of messages.entries()) {
      if (i === 0 && this.progressMessage) {
        const progress = this.progressMessage;
        this.progressMessage = null;
        const edited = await withAttachFallback(out, async (p) => {
          await progress.edit({ content: p.content ?? '', files: p.files, attachments: [], allowedMentions: NO_MENTIONS });
        }).then(
          () => true,
          (err: unknown) => {
            // Someone deleted the progress message: post the answer as a fresh reply instead.
            if (classifyDiscordError(err) === 'unknown-message') return false;
            throw err;
          },
        );
        if (edited) continue;
      }
      if (i === 0) await withAttachFallback(out, (p) => this.message.reply({ ...p, allowedMentions: NO_MENTIONS }).then(() => undefined));
      else await withAttachFallback(out, (p) => this.sendToChannel(p));
    }
  }

  private async sendToChannel(payload: Payload): Promise<void> {
    const channel = this.message.channel;
    if (!('send' in channel)) return;
    const options: MessageCreateOptions = { ...payload, allowedMentions: NO_MENTIONS };
    await channel.send(options);
  }
}

/** Answers a `/fromage` command after it was deferred. */
export class InteractionResponder extends BaseResponder {
  private originalUsed = false;
  private progressShown = false;
  private readonly uploadLimit: number;

  constructor(
    private readonly interaction: ChatInputCommandInteraction,
    reporter: ErrorReporter,
    timing: ResponderTiming,
    private readonly deferredEphemeral: boolean,
  ) {
    super(reporter, `interaction ${interaction.id} in channel ${interaction.channelId ?? '?'}`, timing);
    this.uploadLimit = interaction.attachmentSizeLimit ?? DEFAULT_UPLOAD_LIMIT;
  }

  /** Only once a queue position replaced "thinking…": until then Discord's own indicator says enough. */
  protected hasProgress(): boolean {
    return this.progressShown && !this.originalUsed;
  }

  protected async showProgress(text: string): Promise<void> {
    if (this.originalUsed) return;
    this.progressShown = true;
    await this.interaction.editReply({ content: text, allowedMentions: NO_MENTIONS });
  }

  /** The deferred reply already shows "thinking...", Discord's typing for interactions. */
  protected async sendTypingOnce(): Promise<void> {}

  protected async postNotice(text: string): Promise<void> {
    await this.interaction.followUp({ content: text, flags: MessageFlags.Ephemeral, allowedMentions: NO_MENTIONS });
  }

  protected async deliver(reply: Reply): Promise<void> {
    if ((reply.kind === 'error' || reply.kind === 'busy') && !this.deferredEphemeral) {
      // The deferred reply is public; errors are for the user only, so swap it for an ephemeral one.
      const text = replyText(reply) || 'Something went wrong.';
      if (!this.originalUsed) {
        this.originalUsed = true;
        await this.interaction.deleteReply().catch((err: unknown) => this.reporter.report(err, this.where, 'delete deferred reply'));
      }
      await this.postNotice(text);
      return;
    }
    const messages = await prepareMessages(reply, this.uploadLimit);
    for (const out of messages) {
      if (!this.originalUsed) {
        this.originalUsed = true;
        await withAttachFallback(out, (p) => this.interaction.editReply({ ...p, allowedMentions: NO_MENTIONS }).then(() => undefined));
      } else {
        const flags = this.deferredEphemeral ? MessageFlags.Ephemeral : undefined;
        await withAttachFallback(out, (p) => this.interaction.followUp({ ...p, flags, allowedMentions: NO_MENTIONS }).then(() => undefined));
      }
    }
  }
}

/** Renders the reply and fits every image under the upload limit; an empty answer still says so. */
async function prepareMessages(reply: Reply, uploadLimit: number): Promise<Payload[]> {
  let rendered: OutgoingMessage[] = renderReply(reply);
  if (rendered.length === 0) rendered = [{ content: '(The model gave an empty answer.)', files: [] }];
  const payloads: Payload[] = [];
  for (const out of rendered) {
    const fitted = await Promise.all(out.files.map((f) => fitToUploadLimit(f, uploadLimit)));
    const kept = fitted.filter((f): f is ReplyImage => f !== null);
    let content = out.content;
    const dropped = fitted.length - kept.length;
    if (dropped > 0) content = joinNote(content, `(${dropped} image${dropped > 1 ? 's were' : ' was'} too large to upload here and left out.)`);
    payloads.push({ content, files: toAttachments(kept) });
  }
  return payloads;
}

function toAttachments(images: readonly ReplyImage[]): AttachmentBuilder[] {
  const used = new Set<string>();
  return images.map((image, i) => {
    let name = image.filename.replace(/[^A-Za-z0-9._-]/g, '_') || `image-${i + 1}.png`;
    if (used.has(name)) name = `${i + 1}-${name}`;
    used.add(name);
    const description = image.source ? `Retrieved image: ${image.source}`.slice(0, 1024) : undefined;
    return new AttachmentBuilder(image.data, { name, description });
  });
}

function joinNote(content: string | undefined, note: string): string {
  return content ? `${content}\n${note}` : note;
}

/**
 * Sends a payload; when Discord refuses it for a missing permission and it carried files, sends
 * the text once more without them (Attach Files is the permission servers most often forget).
 */
async function withAttachFallback(payload: Payload, send: (p: Payload) => Promise<void>): Promise<void> {
  try {
    await send(payload);
  } catch (err) {
    if (payload.files.length === 0 || classifyDiscordError(err) !== 'missing-permissions') throw err;
    const n = payload.files.length;
    const note = `(I could not attach ${n} image${n > 1 ? 's' : ''}: the bot needs the Attach Files permission in this channel.)`;
    await send({ content: joinNote(payload.content, note), files: [] });
  }
}
