/**
 * The platform-neutral conversation model. Adapters (adapters/*) import only this folder:
 * they turn platform events into `IncomingMessage`s and render `Reply`s; nothing here knows
 * about Discord, Slack or the model.
 */

export type Platform = 'discord' | 'slack' | 'shell' | 'web';

/**
 * Where a dialogue lives. Discord: guild + channel (+ thread); Slack: team + channel + thread_ts;
 * DMs use workspace `dm`. Two messages with equal keys share one history.
 */
export interface ConversationKey {
  readonly platform: Platform;
  /** Guild (Discord) or team (Slack) id; `dm` for direct messages; `local` for the shell. */
  readonly workspace: string;
  readonly channel: string;
  /** Thread id (Discord thread channel, Slack thread_ts), absent for the channel itself. */
  readonly thread?: string;
}

export interface Author {
  readonly id: string;
  readonly name: string;
}

/** An image attached to a message. Bytes are fetched lazily and never beyond `maxBytes`. */
export interface ImageInput {
  readonly name: string;
  /** As the platform reports it; verified again by decoding before use. */
  readonly contentType?: string;
  /** As the platform reports it, in bytes. */
  readonly size?: number;
  /** Throws `ImageInputError` when the body is larger than `maxBytes` or cannot be fetched. */
  fetch(maxBytes: number): Promise<Buffer>;
}

/** What the user asked for. Chat messages and slash commands share one path. */
export type Intent =
  | { readonly kind: 'chat' }
  | { readonly kind: 'retrieve'; readonly query: string; readonly count?: number }
  | { readonly kind: 'reset' }
  | { readonly kind: 'settings'; readonly changes: Partial<ConversationSettings>; readonly reset?: boolean }
  | { readonly kind: 'help' }
  /** Sent by an adapter when a person (re)opens a conversation: says whether earlier messages are still remembered (nothing for a new one). */
  | { readonly kind: 'welcome' };

export interface IncomingMessage {
  readonly key: ConversationKey;
  /** Platform message id (or interaction id for slash commands). */
  readonly id: string;
  readonly author: Author;
  /** Text with the bot's mention stripped. */
  readonly text: string;
  readonly images: readonly ImageInput[];
  readonly intent: Intent;
  /** Id of the message this one replies to, when the platform says so. */
  readonly replyTo?: string;
  readonly receivedAt: Date;
}

/** Per-conversation generation settings; defaults are the reference demo's. */
export interface ConversationSettings {
  /** Multiplier on the raw [RET] logit. */
  readonly retScaleFactor: number;
  /** Images shown per [RET] (max_img_per_ret). */
  readonly maxImages: number;
  /** Tokens generated per answer (num_words). */
  readonly maxWords: number;
  /** 0 = greedy. */
  readonly temperature: number;
}

export const DEFAULT_SETTINGS: ConversationSettings = Object.freeze({
  retScaleFactor: 1.0,
  maxImages: 2,
  maxWords: 32,
  temperature: 0,
});

/** A retrieved (or otherwise produced) image, ready to upload. */
export interface ReplyImage {
  readonly data: Buffer;
  readonly contentType: string;
  readonly filename: string;
  /** Where it came from (index URL or gallery path), for attribution. */
  readonly source: string;
  /** Retrieval score (exp(logit_scale) * cosine), when retrieved. */
  readonly score?: number;
  readonly width?: number;
  readonly height?: number;
}

export type Segment =
  | { readonly type: 'text'; readonly text: string }
  | { readonly type: 'images'; readonly images: readonly ReplyImage[] };

/**
 * `answer`: model output. `notice`: information for the user (settings, help, trimmed input).
 * `error`: something the user can fix; platforms may show it privately (ephemeral).
 * `busy`: the bot cannot take the job now; says when to retry.
 */
export type ReplyKind = 'answer' | 'notice' | 'error' | 'busy';

export interface Reply {
  readonly kind: ReplyKind;
  /** In the order the model produced them. */
  readonly segments: readonly Segment[];
}

/** Progress of a queued or running job, shown by adapters as they can (typing, a status message). */
export type Progress =
  | { readonly state: 'queued'; readonly position: number; readonly etaSeconds?: number }
  | { readonly state: 'running'; readonly text?: string };

/** Given by the adapter with each message: how to answer it on its platform. */
export interface Responder {
  /** Sends the reply; replaces the progress message, if one was posted. */
  send(reply: Reply): Promise<void>;
  /** Shows that the bot is working (typing indicator); adapters renew it as the platform needs. */
  typing(): Promise<void>;
  /** Posts a progress message the first time, edits it after; adapters throttle edits. */
  progress(update: Progress): Promise<void>;
}

export type MessageHandler = (message: IncomingMessage, responder: Responder) => Promise<void>;

/** One per platform. `start` resolves once the adapter receives messages. */
export interface Adapter {
  readonly platform: Platform;
  start(handler: MessageHandler): Promise<void>;
  stop(): Promise<void>;
}

/** Thrown by `ImageInput.fetch` and image normalization; the message is safe to show users. */
export class ImageInputError extends Error {
  constructor(
    message: string,
    readonly reason: 'too-large' | 'not-an-image' | 'unreachable' | 'corrupt',
  ) {
    super(message);
    this.name = 'ImageInputError';
  }
}
