/**
 * Remembers recently seen keys for a while. Slack redelivers an event it thinks was not
 * acknowledged (same `event_id`, with `X-Slack-Retry-Num`), and one message can arrive as
 * both `app_mention` and `message`; either way it must be answered once.
 */
export class RecentKeys {
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly ttlMs = 60 * 60 * 1000,
    private readonly maxKeys = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** True the first time a key is seen within the TTL; false for repeats. */
  firstSighting(key: string): boolean {
    const t = this.now();
    this.evict(t);
    const at = this.seen.get(key);
    if (at !== undefined && t - at < this.ttlMs) return false;
    this.seen.set(key, t);
    return true;
  }

  private evict(t: number): void {
    // Insertion order is arrival order, so expired keys are at the front.
    for (const [key, at] of this.seen) {
      if (t - at < this.ttlMs && this.seen.size <= this.maxKeys) break;
      this.seen.delete(key);
    }
  }
}
