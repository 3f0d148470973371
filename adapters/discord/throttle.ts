/**
 * Keeps at most one call per interval, always delivering the latest value: progress edits
 * arrive faster than Discord lets a message be edited, and only the newest one matters.
 */
export class LatestValueThrottle<T> {
  private last = -Infinity;
  private pending: { value: T } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private inFlight: Promise<void> = Promise.resolve();
  private cancelled = false;

  constructor(
    private readonly run: (value: T) => Promise<void>,
    private readonly intervalMs: number,
    private readonly now: () => number = () => Date.now(),
  ) {}

  push(value: T): void {
    if (this.cancelled) return;
    this.pending = { value };
    if (this.timer) return;
    const wait = this.last + this.intervalMs - this.now();
    if (wait <= 0) this.fire();
    else this.timer = setTimeout(() => this.fire(), wait);
  }

  /** Drops any pending value and resolves once a call already running has finished. */
  async cancel(): Promise<void> {
    this.cancelled = true;
    this.pending = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.inFlight;
  }

  private fire(): void {
    this.timer = null;
    const next = this.pending;
    this.pending = null;
    if (!next || this.cancelled) return;
    this.last = this.now();
    // Calls never overlap: the next one waits for this one (errors are the caller's to handle).
    this.inFlight = this.inFlight.then(() => this.run(next.value)).catch(() => undefined);
  }
}
