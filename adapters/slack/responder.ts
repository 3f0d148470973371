/**
 * Renders the service's replies in Slack: text as escaped, split messages; each group of
 * images as one files.uploadV2 call, in the order the model produced them. The status
 * message, if one was posted, becomes the first text message (or is deleted when the reply
 * starts with images), so the answer appears where the user saw "working on it".
 */
import type { AdapterLogger } from '../../src/conversation/logger.ts';
import type { Progress, Reply, ReplyImage, Responder } from '../../src/conversation/types.ts';
import { showControlCharacters } from '../../src/conversation/text.ts';
import { escapeMrkdwn, renderTextMessages } from './mrkdwn.ts';
import { StatusMessage, STATUS_UPDATE_INTERVAL_MS } from './status-message.ts';
import { slackErrorCode, type Destination, type SlackApi } from './web-api.ts';

/** Private replies for slash commands, through the command's response_url. */
export type Ephemeral = (text: string) => Promise<void>;

export interface ResponderOptions {
  readonly logger: AdapterLogger;
  /** Set for slash commands: notices and errors go privately to the user who asked. */
  readonly ephemeral?: Ephemeral;
  /** Raw mrkdwn put before the first public message (who asked what, for slash commands). */
  readonly headline?: string;
  readonly statusIntervalMs?: number;
}

const MAX_EPHEMERAL_MESSAGES = 3;

const KIND_PREFIX: Record<Reply['kind'], string> = { answer: '', notice: '', error: ':warning: ', busy: ':hourglass: ' };

export function progressText(update: Progress): string {
  if (update.state === 'queued') {
    const eta = update.etaSeconds !== undefined && update.etaSeconds > 0 ? `, about ${Math.max(1, Math.round(update.etaSeconds))} s` : '';
    return `:hourglass_flowing_sand: Queued: position ${update.position}${eta}.`;
  }
  // Streamed model text is shown as text: escaped (no <!channel> pings) and with controls visible.
  return `:thought_balloon: ${update.text ? escapeMrkdwn(showControlCharacters(update.text)) : 'Thinking…'}`;
}

/** The public messages a reply becomes, in order. */
type Part = { readonly type: 'text'; readonly mrkdwn: string } | { readonly type: 'images'; readonly images: readonly ReplyImage[] };

function replyParts(reply: Reply, headline: string | undefined): Part[] {
  const parts: Part[] = [];
  let prefix = KIND_PREFIX[reply.kind];
  for (const segment of reply.segments) {
    if (segment.type === 'images') {
      if (segment.images.length > 0) parts.push({ type: 'images', images: segment.images });
      continue;
    }
    for (const chunk of renderTextMessages(segment.text)) {
      parts.push({ type: 'text', mrkdwn: prefix + chunk });
      prefix = '';
    }
  }
  if (headline) {
    if (parts[0]?.type === 'text') parts[0] = { type: 'text', mrkdwn: `${headline}\n${parts[0].mrkdwn}` };
    else parts.unshift({ type: 'text', mrkdwn: headline });
  }
  return parts;
}

function plainText(reply: Reply): string {
  const texts = reply.segments.flatMap((s) => (s.type === 'text' ? [s.text] : [`(${s.images.length} image${s.images.length === 1 ? '' : 's'})`]));
  return KIND_PREFIX[reply.kind] + texts.join('\n');
}

export class SlackResponder implements Responder {
  private readonly status: StatusMessage;

  constructor(
    private readonly api: SlackApi,
    private readonly to: Destination,
    private readonly options: ResponderOptions,
  ) {
    this.status = new StatusMessage(
      api,
      to,
      (err) => options.logger.warn({ err, channel: to.channel }, 'slack: could not post or edit the status message'),
      options.statusIntervalMs ?? STATUS_UPDATE_INTERVAL_MS,
    );
  }

  /** Slack has no typing indicator for bots; a status message plays that role. */
  async typing(): Promise<void> {
    if (!this.status.posted) await this.status.show(progressText({ state: 'running' }));
  }

  progress(update: Progress): Promise<void> {
    return this.status.show(progressText(update));
  }

  async send(reply: Reply): Promise<void> {
    let statusTs = await this.status.close();
    if (this.options.ephemeral && reply.kind !== 'answer') {
      if (statusTs) await this.removeQuietly(statusTs);
      await this.sendPrivately(reply);
      return;
    }
    try {
      for (const part of replyParts(reply, this.options.headline)) {
        if (part.type === 'text' && statusTs) {
          await this.replaceStatus(statusTs, part.mrkdwn);
          statusTs = undefined;
        } else if (part.type === 'text') {
          await this.api.post(this.to, part.mrkdwn);
        } else {
          if (statusTs) await this.removeQuietly(statusTs);
          statusTs = undefined;
          await this.uploadOrExplain(part.images);
        }
      }
      if (statusTs) await this.removeQuietly(statusTs);
    } catch (err) {
      if (!this.options.ephemeral) throw err;
      // A slash command used where the bot cannot post: tell the user privately how to fix it.
      const code = slackErrorCode(err);
      const why =
        code === 'not_in_channel' || code === 'channel_not_found'
          ? "I can't post in this channel. Invite me with `/invite @fromage` (or use me in a channel I'm in) and try again."
          : `Slack refused my answer (${code ?? (err as Error).message}). Try again in a moment.`;
      this.options.logger.warn({ err, channel: this.to.channel }, 'slack: could not post a slash command answer');
      await this.options.ephemeral(`:warning: ${why}`);
    }
  }

  private async sendPrivately(reply: Reply): Promise<void> {
    const ephemeral = this.options.ephemeral;
    if (!ephemeral) return;
    const chunks = renderTextMessages(plainText(reply));
    try {
      // A response_url takes five messages; one went to "working on it".
      for (const chunk of chunks.slice(0, MAX_EPHEMERAL_MESSAGES)) await ephemeral(chunk);
    } catch (err) {
      // response_url expires after 30 minutes; a long queue can outlast it.
      this.options.logger.warn({ err }, 'slack: response_url failed; answering in the channel instead');
      for (const chunk of chunks) await this.api.post(this.to, chunk);
    }
  }

  /** The status message may have been deleted by someone; then the text is posted anew. */
  private async replaceStatus(ts: string, mrkdwn: string): Promise<void> {
    try {
      await this.api.update(this.to.channel, ts, mrkdwn);
    } catch (err) {
      this.options.logger.warn({ err, channel: this.to.channel }, 'slack: could not edit the status message; posting instead');
      await this.api.post(this.to, mrkdwn);
    }
  }

  /** A failed upload must not swallow the rest of the answer; the user learns why images are missing. */
  private async uploadOrExplain(images: readonly ReplyImage[]): Promise<void> {
    try {
      await this.api.upload(this.to, images);
    } catch (err) {
      const code = slackErrorCode(err);
      this.options.logger.warn({ err, channel: this.to.channel }, 'slack: image upload failed');
      const fix =
        code === 'missing_scope' || code === 'not_allowed_token_type'
          ? 'the app lacks the files:write scope: add it under OAuth & Permissions and reinstall the app'
          : `Slack said ${code ?? (err as Error).message}`;
      const count = `${images.length} image${images.length === 1 ? '' : 's'}`;
      await this.api.post(this.to, `:warning: I could not upload ${count} (${escapeMrkdwn(fix)}).`);
    }
  }

  private async removeQuietly(ts: string): Promise<void> {
    try {
      await this.api.remove(this.to.channel, ts);
    } catch (err) {
      this.options.logger.warn({ err, channel: this.to.channel }, 'slack: could not delete the status message');
    }
  }
}
