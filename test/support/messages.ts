/** Builders for IncomingMessages and a Responder that records what the bot said. */
import type { ImageInput, IncomingMessage, Intent, Progress, Reply, Responder } from '../../src/conversation/types.ts';
import { ImageInputError } from '../../src/conversation/types.ts';

let counter = 0;

export function message(text: string, opts: { user?: string; channel?: string; images?: ImageInput[]; intent?: Intent } = {}): IncomingMessage {
  return {
    key: { platform: 'shell', workspace: 'test', channel: opts.channel ?? 'c1' },
    id: `m${++counter}`,
    author: { id: opts.user ?? 'u1', name: opts.user ?? 'u1' },
    text,
    images: opts.images ?? [],
    intent: opts.intent ?? { kind: 'chat' },
    receivedAt: new Date(),
  };
}

export function bytesImage(name: string, data: Buffer): ImageInput {
  return {
    name,
    contentType: 'image/png',
    size: data.length,
    async fetch(maxBytes) {
      if (data.length > maxBytes) throw new ImageInputError(`${name} is too large`, 'too-large');
      return data;
    },
  };
}

export class RecordingResponder implements Responder {
  readonly replies: Reply[] = [];
  readonly progressUpdates: Progress[] = [];
  typingCount = 0;

  async send(reply: Reply): Promise<void> {
    this.replies.push(reply);
  }

  async typing(): Promise<void> {
    this.typingCount++;
  }

  async progress(update: Progress): Promise<void> {
    this.progressUpdates.push(update);
  }

  /** All text of all replies, joined. */
  text(): string {
    return this.replies.flatMap((r) => r.segments.map((s) => (s.type === 'text' ? s.text : `[${s.images.length} image(s)]`))).join('\n');
  }
}
