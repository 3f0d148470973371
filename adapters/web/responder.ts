/** Turns the handler's replies into saved entries and live events for the pages watching. */
import { createHash } from 'node:crypto';
import type { Reply, ReplyImage, Responder } from '../../src/conversation/types.ts';
import type { LiveConversations } from './live.ts';
import type { ShownImage, ShownSegment, TranscriptStore } from './store.ts';
import { sniffImageType } from './uploads.ts';

export interface ExchangeRef {
  readonly conversation: string;
  readonly exchange: number;
  readonly intent: string;
  /** The retrieve query: alt text for images that have no caption. */
  readonly query?: string;
}

const MAX_ALT = 200;

export function createWebResponder(store: TranscriptStore, live: LiveConversations, ref: ExchangeRef): Responder {
  return {
    async send(reply: Reply) {
      const segments = toShownSegments(store, reply, ref.query);
      const entry = store.addBotEntry(ref.conversation, ref.exchange, reply.kind, ref.intent, segments);
      live.publish(ref.conversation, { type: 'entry', data: entry });
    },
    async typing() {
      live.progress(ref.conversation, ref.exchange, { state: 'running' });
    },
    async progress(update) {
      live.progress(ref.conversation, ref.exchange, update);
    },
  };
}

function toShownSegments(store: TranscriptStore, reply: Reply, query: string | undefined): ShownSegment[] {
  let caption: string | undefined;
  return reply.segments.map((segment) => {
    if (segment.type === 'text') {
      caption = segment.text.trim() || caption;
      return { type: 'text', text: segment.text };
    }
    return { type: 'images', images: segment.images.map((image) => keep(store, image, caption ?? query)) };
  });
}

function keep(store: TranscriptStore, image: ReplyImage, caption: string | undefined): ShownImage {
  const hash = createHash('sha256').update(image.data).digest('hex');
  // The bytes decide what the browser is told, not the reported type: a server could call an SVG a PNG.
  const contentType = sniffImageType(image.data) ?? 'application/octet-stream';
  store.putImage(hash, contentType, image.data);
  const alt = (caption ?? image.filename).slice(0, MAX_ALT);
  return { hash, contentType, name: image.filename, alt, source: image.source, score: image.score, width: image.width, height: image.height };
}
