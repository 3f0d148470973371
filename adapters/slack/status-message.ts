/**
 * The "working on it" message of one request: posted once, edited as the queue moves, and
 * finally handed to the reply, which overwrites or deletes it. Slack rate-limits chat.update
 * (about one per second per channel), so edits are throttled to one per interval and only
 * the latest text is sent; intermediate states are skipped, never queued.
 */
import type { Destination, SlackApi } from './web-api.ts';

export const STATUS_UPDATE_INTERVAL_MS = 1200;

export class StatusMessage {
  private ts: string | undefined;
  /** Serializes the post and every edit, so edits never overtake the post. */
  private chain: Promise<void> = Promise.resolve();
  private lastWriteAt = -Infinity;
  private pendingText: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private posting = false;

  constructor(
    private readonly api: SlackApi,
    private readonly to: Destination,
    private readonly onError: (err: unknown) => void,
    private readonly intervalMs = STATUS_UPDATE_INTERVAL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  get posted(): boolean {
    return this.ts !== undefined || this.posting;
  }

  /** Shows `text`: posts it the first time, then edits, at most once per interval. */
  show(text: string): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (!this.posted) {
      this.posting = true;
      this.lastWriteAt = this.now();
      return this.enqueue(async () => {
        this.ts = await this.api.post(this.to, text);
      });
    }
    this.pendingText = text;
    const wait = this.lastWriteAt + this.intervalMs - this.now();
    if (wait <= 0 && !this.timer) return this.flush();
    if (!this.timer) this.timer = setTimeout(() => void this.flush(), Math.max(0, wait));
    return Promise.resolve();
  }

  /**
   * Stops all further edits and returns the message's ts (after any in-flight write), so the
   * reply can overwrite it; undefined when nothing was posted or the post failed.
   */
  async close(): Promise<string | undefined> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.pendingText = undefined;
    await this.chain;
    return this.ts;
  }

  private flush(): Promise<void> {
    this.timer = undefined;
    const text = this.pendingText;
    this.pendingText = undefined;
    if (text === undefined || this.closed) return Promise.resolve();
    this.lastWriteAt = this.now();
    return this.enqueue(async () => {
      if (this.ts && !this.closed) await this.api.update(this.to.channel, this.ts, text);
    });
  }

  private enqueue(write: () => Promise<void>): Promise<void> {
    // Progress is best effort: a failed edit must not fail the request it describes.
    this.chain = this.chain.then(write).catch(this.onError);
    return this.chain;
  }
}
