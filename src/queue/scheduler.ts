/**
 * The inference scheduler. p-queue runs jobs with concurrency = engine slots; this class decides
 * which job goes next:
 * - one job in flight per conversation, in arrival order (answers never overtake each other);
 * - round-robin across users, so one user's burst cannot starve the others;
 * - a per-user token bucket and a bounded queue: refusals say when to retry, nothing is dropped
 *   silently;
 * - queue position and ETA events for adapters, per-job timeout and cancellation, and a
 *   shutdown that stops accepting, fails queued jobs with a message and drains running ones.
 */
import PQueue from 'p-queue';
import { TokenBuckets } from './token-bucket.ts';

export interface SchedulerOptions {
  /** Jobs run at once (engine slots). */
  readonly concurrency: number;
  /** Jobs waiting (not running) at most; more are refused as busy. */
  readonly maxQueued: number;
  /** Per-user jobs per minute, and how many may come at once. */
  readonly userRatePerMinute: number;
  readonly userBurst: number;
  /** A running job is aborted after this. */
  readonly jobTimeoutMs: number;
  /** Run time assumed for ETAs before any job finished. */
  readonly initialRunEstimateMs?: number;
  readonly now?: () => number;
}

export interface JobSpec<T> {
  readonly conversation: string;
  readonly user: string;
  /** Must stop soon after `signal` aborts. */
  readonly run: (signal: AbortSignal) => Promise<T>;
  /** Called when the job's place in the queue changes (position 1 = next to run). */
  readonly onQueued?: (position: number, etaSeconds: number) => void;
  /** Called once, when the job starts running. */
  readonly onStart?: () => void;
}

export type RejectionReason = 'rate-limited' | 'busy' | 'timeout' | 'cancelled' | 'shutting-down';

export class SchedulerRejection extends Error {
  constructor(
    readonly reason: RejectionReason,
    message: string,
    /** Seconds after which a retry may succeed, when that is known. */
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
    this.name = 'SchedulerRejection';
  }
}

export interface JobHandle<T> {
  readonly result: Promise<T>;
  /** Cancels a queued job, or aborts a running one. */
  cancel(): void;
}

export interface SchedulerStats {
  readonly queued: number;
  readonly running: number;
  readonly averageRunMs: number;
}

interface Job<T> {
  readonly id: number;
  readonly spec: JobSpec<T>;
  readonly enqueuedAt: number;
  readonly controller: AbortController;
  readonly resolve: (v: T) => void;
  readonly reject: (e: Error) => void;
  started: boolean;
  lastPosition: number;
}

/** Observer hooks for metrics. */
export interface SchedulerObserver {
  jobStarted?(waitMs: number): void;
  jobFinished?(runMs: number, outcome: 'ok' | 'error' | 'timeout' | 'cancelled'): void;
  queueChanged?(queued: number, running: number): void;
}

export class Scheduler {
  private readonly executor: PQueue;
  private readonly buckets: TokenBuckets;
  private readonly now: () => number;
  /** Waiting jobs per user, each FIFO. Map order is the round-robin order. */
  private readonly waiting = new Map<string, Job<unknown>[]>();
  private readonly busyConversations = new Set<string>();
  /** Waiting jobs per conversation in arrival order; only the head may start. */
  private readonly conversationQueues = new Map<string, Job<unknown>[]>();
  private running = 0;
  private queued = 0;
  private nextId = 1;
  private averageRunMs: number;
  private accepting = true;

  constructor(
    private readonly options: SchedulerOptions,
    private readonly observer: SchedulerObserver = {},
  ) {
    this.executor = new PQueue({ concurrency: options.concurrency });
    this.now = options.now ?? Date.now;
    this.buckets = new TokenBuckets(options.userRatePerMinute, options.userBurst, this.now);
    this.averageRunMs = options.initialRunEstimateMs ?? 10_000;
  }

  stats(): SchedulerStats {
    return { queued: this.queued, running: this.running, averageRunMs: this.averageRunMs };
  }

  /** Seconds until a slot is likely free for a job at `position`. */
  estimateSeconds(position: number): number {
    const rounds = Math.ceil(position / this.options.concurrency);
    return Math.max(1, Math.round((rounds * this.averageRunMs) / 1000));
  }

  submit<T>(spec: JobSpec<T>): JobHandle<T> {
    let resolve!: (v: T) => void;
    let reject!: (e: Error) => void;
    const result = new Promise<T>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const refuse = (e: SchedulerRejection): JobHandle<T> => {
      reject(e);
      return { result, cancel() {} };
    };
    if (!this.accepting) return refuse(new SchedulerRejection('shutting-down', 'The bot is shutting down; try again in a minute.', 60));
    const wait = this.buckets.take(spec.user);
    if (wait > 0)
      return refuse(new SchedulerRejection('rate-limited', `You are sending messages faster than I can answer; try again in ${wait} s.`, wait));
    if (this.queued >= this.options.maxQueued) {
      this.buckets.refund(spec.user);
      const eta = this.estimateSeconds(this.queued + 1);
      return refuse(new SchedulerRejection('busy', `I'm busy right now; try again in ~${eta} s.`, eta));
    }
    const job: Job<T> = {
      id: this.nextId++,
      spec,
      enqueuedAt: this.now(),
      controller: new AbortController(),
      resolve,
      reject,
      started: false,
      lastPosition: 0,
    };
    const list = this.waiting.get(spec.user) ?? [];
    list.push(job as Job<unknown>);
    this.waiting.set(spec.user, list);
    const conv = this.conversationQueues.get(spec.conversation) ?? [];
    conv.push(job as Job<unknown>);
    this.conversationQueues.set(spec.conversation, conv);
    this.queued++;
    this.observer.queueChanged?.(this.queued, this.running);
    this.pump();
    return { result, cancel: () => this.cancel(job as Job<unknown>) };
  }

  /** Stops accepting, fails waiting jobs, and waits up to `graceMs` for running ones before aborting them. */
  async shutdown(graceMs: number): Promise<void> {
    this.accepting = false;
    for (const list of this.waiting.values())
      for (const job of list) job.reject(new SchedulerRejection('shutting-down', 'The bot is restarting; your message was not answered. Please send it again in a minute.'));
    this.waiting.clear();
    this.conversationQueues.clear();
    this.queued = 0;
    this.observer.queueChanged?.(0, this.running);
    const idle = this.executor.onIdle();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      idle.then(() => false),
      new Promise<boolean>((r) => {
        timer = setTimeout(() => r(true), graceMs);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      for (const job of this.inFlight) job.controller.abort(new SchedulerRejection('shutting-down', 'The bot is restarting; the answer was cut short.'));
      await idle;
    }
  }

  private readonly inFlight = new Set<Job<unknown>>();

  private cancel(job: Job<unknown>): void {
    if (job.started) {
      job.controller.abort(new SchedulerRejection('cancelled', 'Cancelled.'));
      return;
    }
    const list = this.waiting.get(job.spec.user);
    const at = list?.indexOf(job) ?? -1;
    if (!list || at < 0) return;
    list.splice(at, 1);
    if (list.length === 0) this.waiting.delete(job.spec.user);
    this.leaveConversationQueue(job);
    this.queued--;
    job.reject(new SchedulerRejection('cancelled', 'Cancelled.'));
    this.observer.queueChanged?.(this.queued, this.running);
    this.announcePositions();
  }

  /** Starts eligible jobs while slots are free, then tells waiting jobs where they stand. */
  private pump(): void {
    while (this.running < this.options.concurrency) {
      const job = this.pickNext();
      if (!job) break;
      this.start(job);
    }
    this.announcePositions();
  }

  /** The first user in round-robin order with a job whose conversation is idle. */
  private pickNext(): Job<unknown> | undefined {
    for (const [user, list] of this.waiting) {
      const at = list.findIndex((j) => this.isEligible(j));
      if (at < 0) continue;
      const [job] = list.splice(at, 1);
      // Move the user to the back of the round-robin order.
      this.waiting.delete(user);
      if (list.length > 0) this.waiting.set(user, list);
      return job;
    }
    return undefined;
  }

  /** A conversation's jobs run in arrival order, even across users: only its oldest waiting job may start. */
  private isEligible(job: Job<unknown>): boolean {
    return !this.busyConversations.has(job.spec.conversation) && this.conversationQueues.get(job.spec.conversation)?.[0] === job;
  }

  private leaveConversationQueue(job: Job<unknown>): void {
    const conv = this.conversationQueues.get(job.spec.conversation);
    if (!conv) return;
    const at = conv.indexOf(job);
    if (at >= 0) conv.splice(at, 1);
    if (conv.length === 0) this.conversationQueues.delete(job.spec.conversation);
  }

  private start(job: Job<unknown>): void {
    job.started = true;
    this.leaveConversationQueue(job);
    this.queued--;
    this.running++;
    this.inFlight.add(job);
    this.busyConversations.add(job.spec.conversation);
    const startedAt = this.now();
    this.observer.jobStarted?.(startedAt - job.enqueuedAt);
    this.observer.queueChanged?.(this.queued, this.running);
    const timer = setTimeout(
      () => job.controller.abort(new SchedulerRejection('timeout', `That took longer than ${Math.round(this.options.jobTimeoutMs / 1000)} s, so I stopped.`)),
      this.options.jobTimeoutMs,
    );
    // The caller hears of a timeout or cancellation at once; the slot stays taken until the
    // work really stops, so an engine that is slow to notice the abort is never oversubscribed.
    const onAbort = () => job.reject(job.controller.signal.reason as Error);
    job.controller.signal.addEventListener('abort', onAbort, { once: true });
    void this.executor.add(async () => {
      let outcome: 'ok' | 'error' | 'timeout' | 'cancelled' = 'ok';
      try {
        job.spec.onStart?.();
        const value = await job.spec.run(job.controller.signal);
        if (job.controller.signal.aborted) outcome = abortOutcome(job.controller.signal);
        else job.resolve(value);
      } catch (err) {
        if (job.controller.signal.aborted) outcome = abortOutcome(job.controller.signal);
        else {
          outcome = 'error';
          job.reject(err instanceof Error ? err : new Error(String(err)));
        }
      } finally {
        clearTimeout(timer);
        job.controller.signal.removeEventListener('abort', onAbort);
        const runMs = this.now() - startedAt;
        this.averageRunMs = this.averageRunMs * 0.8 + runMs * 0.2;
        this.running--;
        this.inFlight.delete(job);
        this.busyConversations.delete(job.spec.conversation);
        this.observer.jobFinished?.(runMs, outcome);
        this.observer.queueChanged?.(this.queued, this.running);
        this.pump();
      }
    });
  }

  /** Positions follow the round-robin dispatch order: the i-th job of every user comes before any user's (i+1)-th. */
  private announcePositions(): void {
    const lists = [...this.waiting.values()];
    let position = 0;
    for (let depth = 0; ; depth++) {
      let any = false;
      for (const list of lists) {
        const job = list[depth];
        if (!job) continue;
        any = true;
        position++;
        if (job.lastPosition !== position) {
          job.lastPosition = position;
          job.spec.onQueued?.(position, this.estimateSeconds(position));
        }
      }
      if (!any) break;
    }
  }
}

function abortOutcome(signal: AbortSignal): 'timeout' | 'cancelled' {
  const reason: unknown = signal.reason;
  return reason instanceof SchedulerRejection && reason.reason === 'timeout' ? 'timeout' : 'cancelled';
}
