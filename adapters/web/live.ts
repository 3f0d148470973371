/**
 * What happens now in each conversation: answers being written (with their last progress, so a
 * reloaded page shows them) and the pages listening for events (server-sent events).
 */
import type { Progress } from '../../src/conversation/types.ts';

export type LiveEvent =
  /** A new entry (a question or a reply) was saved. */
  | { readonly type: 'entry'; readonly data: unknown }
  /** An exchange is waiting in the queue or being written. */
  | { readonly type: 'progress'; readonly data: { readonly exchange: number; readonly progress: Progress } }
  /** An exchange got all its replies. */
  | { readonly type: 'done'; readonly data: { readonly exchange: number } }
  /** Entries were removed (undo, reset): fetch the conversation again. */
  | { readonly type: 'reload'; readonly data: Record<string, never> }
  /** The conversation was deleted (from another tab, perhaps). */
  | { readonly type: 'deleted'; readonly data: Record<string, never> };

export type Listener = (event: LiveEvent) => void;

export class LiveConversations {
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly pending = new Map<string, Map<number, Progress>>();

  subscribe(conversation: string, listener: Listener): () => void {
    let set = this.listeners.get(conversation);
    if (!set) this.listeners.set(conversation, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.listeners.delete(conversation);
    };
  }

  publish(conversation: string, event: LiveEvent): void {
    for (const listener of this.listeners.get(conversation) ?? []) listener(event);
  }

  begin(conversation: string, exchange: number): void {
    let map = this.pending.get(conversation);
    if (!map) this.pending.set(conversation, (map = new Map()));
    map.set(exchange, { state: 'queued', position: 0 });
  }

  progress(conversation: string, exchange: number, progress: Progress): void {
    const map = this.pending.get(conversation);
    if (!map?.has(exchange)) return;
    map.set(exchange, progress);
    this.publish(conversation, { type: 'progress', data: { exchange, progress } });
  }

  end(conversation: string, exchange: number): void {
    const map = this.pending.get(conversation);
    map?.delete(exchange);
    if (map?.size === 0) this.pending.delete(conversation);
    this.publish(conversation, { type: 'done', data: { exchange } });
  }

  pendingOf(conversation: string): { exchange: number; progress: Progress }[] {
    return [...(this.pending.get(conversation) ?? [])].map(([exchange, progress]) => ({ exchange, progress }));
  }

  busy(conversation: string): boolean {
    return (this.pending.get(conversation)?.size ?? 0) > 0;
  }
}
