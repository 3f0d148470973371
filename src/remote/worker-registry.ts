/**
 * The gateway's view of the workers: their announcements (polled), the jobs this gateway has
 * on each, and which died. A worker is dead when its announcement expired while this gateway
 * was connected to Redis for longer than the TTL (a Redis outage must not kill every worker).
 */
import type { Redis } from 'ioredis';
import { KEYS } from './keys.ts';
import { announcementSchema, type Announcement } from './protocol.ts';

export interface WorkerView {
  announcement: Announcement;
  /** Local time this gateway last saw the announcement. */
  seenAt: number;
  /** Jobs this gateway has routed to the worker and not yet collected. */
  readonly jobs: Set<string>;
}

export class WorkerRegistry {
  readonly workers = new Map<string, WorkerView>();
  private connectedSince = 0;

  constructor(
    private readonly redis: Redis,
    private readonly ttlMs: number,
    private readonly onDead: (id: string, view: WorkerView) => void,
    private readonly onChange: () => void,
  ) {}

  /** Called when the connection becomes ready: announcements may have expired during the outage. */
  connected(now = Date.now()): void {
    this.connectedSince = now;
    for (const w of this.workers.values()) w.seenAt = now;
  }

  async poll(now = Date.now()): Promise<void> {
    if (this.redis.status !== 'ready') return;
    const ids = await this.redis.smembers(KEYS.workers);
    const raw = ids.length ? await this.redis.mget(ids.map((id) => KEYS.worker(id))) : [];
    const seen = new Set<string>();
    const gone: string[] = [];
    ids.forEach((id, i) => {
      const text = raw[i];
      if (!text) {
        gone.push(id);
        return;
      }
      let parsed: Announcement | undefined;
      try {
        const r = announcementSchema.safeParse(JSON.parse(text));
        if (r.success && r.data.id === id) parsed = r.data;
      } catch {
        parsed = undefined;
      }
      if (!parsed) return;
      seen.add(id);
      const view = this.workers.get(id);
      if (view) {
        view.announcement = parsed;
        view.seenAt = now;
      } else this.workers.set(id, { announcement: parsed, seenAt: now, jobs: new Set() });
    });
    // Expired announcements of workers this gateway never routed to are just tidied away.
    const stale = gone.filter((id) => !this.workers.has(id));
    if (stale.length) await this.redis.srem(KEYS.workers, ...stale);
    const settled = now - this.connectedSince > this.ttlMs;
    for (const [id, view] of this.workers) {
      if (seen.has(id)) continue;
      if (!settled) continue;
      this.workers.delete(id);
      await this.redis.srem(KEYS.workers, id);
      this.onDead(id, view);
    }
    this.onChange();
  }

  /** Workers that may be given a job for `bundleId`. */
  eligible(bundleId: string): WorkerView[] {
    return [...this.workers.values()].filter((w) => w.announcement.state === 'ready' && w.announcement.bundleId === bundleId);
  }

  free(w: WorkerView): number {
    return w.announcement.capacity - w.jobs.size;
  }
}
