/**
 * The inference scheduler. p-queue runs jobs with concurrency = engine slots; this class decides
 * which job goes next:
 * - one job in flight per conversation, in arrival order (answers never overtake each other);
 * - round-robin across users, so one user's burst cannot starve the others;
 * - a conversation's place can be reserved when a message arrives, before its slow preparation
 *   (image download, normalization, token counting), so a later quick message cannot overtake it;
 * - a per-user token bucket and a bounded queue: refusals say when to retry, nothing is dropped
 *   silently; trusted jobs (the one local terminal user) are queued, never refused;
 * - queue position and ETA events for adapters, estimated from measured run times (per requested
 *   token when jobs say how many) and the number of slots; per-job timeout and cancellation; a
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
  /**
   * Run time assumed for ETAs until the first job finished; measured times replace it. Without
   * it, waiting jobs are told their place but no ETA until a run was measured (a guess can be
   * far off: milliseconds on a small bundle, minutes on a slow machine).
   */
  readonly initialRunEstimateMs?: number;
  readonly now?: () => number;
}

export interface JobSpec<T> {
  readonly conversation: string;
  readonly user: string;
  /** Must stop soon after `signal` aborts. */
  readonly run: (signal: AbortSignal) => Promise<T>;
  /** Tokens the job asks the model for, when known: ETAs then scale with it. */
  readonly tokens?: number;
  /** Never rate-limited nor refused as busy: the only local user of a terminal chat. */
  readonly trusted?: boolean;
  /** Called when the job's place in the queue or its ETA changes (position 1 = next to run; no ETA before one is known). */
  readonly onQueued?: (position: number, etaSeconds: number | undefined) => void;
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
  /** Measured mean run time (recent jobs weigh more); null until a job finished. */
  readonly averageRunMs: number | null;
  /** Jobs whose run time was measured. */
  readonly measuredRuns: number;
}

/** A conversation's place, held from a message's arrival until its job is submitted or dropped. */
export interface Reservation {
  /** Queues the job in the reserved place (conversation and user come from the reservation). */
  submit<T>(spec: Omit<JobSpec<T>, 'conversation' | 'user'>): JobHandle<T>;
  /** Gives the place up (no job after all); later jobs of the conversation may then start. */
  release(): void;
}

/** What holds a place in a conversation's queue: a job, or a reservation still being prepared. */
interface Placeholder {
  readonly placeholder: true;
}

interface Job<T> {
  readonly id: number;
  readonly spec: JobSpec<T>;
  readonly enqueuedAt: number;
  readonly controller: AbortController;
  readonly resolve: (v: T) => void;
  readonly reject: (e: Error) => void;
  started: boolean;
  startedAt: number;
  lastPosition: number;
  lastEta: number | undefined;
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
  /** Waiting jobs and reservations per conversation in arrival order; only the head may start. */
  private readonly conversationQueues = new Map<string, (Job<unknown> | Placeholder)[]>();
  private running = 0;
  private queued = 0;
  private nextId = 1;
  private readonly estimate: RunEstimate;
  private accepting = true;
  /** Jobs run at once; changes when the engine's capacity does (model workers come and go). */
  private concurrency: number;

  constructor(
    private readonly options: SchedulerOptions,
    private readonly observer: SchedulerObserver = {},
  ) {
    this.concurrency = options.concurrency;
    this.executor = new PQueue({ concurrency: options.concurrency });
    this.now = options.now ?? Date.now;
    this.buckets = new TokenBuckets(options.userRatePerMinute, options.userBurst, this.now);
    this.estimate = new RunEstimate(options.initialRunEstimateMs);
  }

  /**
   * Runs up to `slots` jobs at once from now on (at least 1): more start at once when it grows;
   * when it shrinks, running jobs finish and fewer start. Waiting jobs' ETAs follow.
   */
  setConcurrency(slots: number): void {
    const next = Math.max(1, Math.floor(slots));
    if (next === this.concurrency) return;
    this.concurrency = next;
    this.executor.concurrency = next;
    this.pump();
  }

  get slots(): number {
    return this.concurrency;
  }

  stats(): SchedulerStats {
    return { queued: this.queued, running: this.running, averageRunMs: this.estimate.measuredMeanMs, measuredRuns: this.estimate.count };
  }

  /**
   * Seconds until the job at `position` (1 = next) is likely answered: the running jobs' expected
   * remaining time and the waiting jobs ahead, spread over the slots (several run at once).
   */
  estimateSeconds(position: number): number {
    return Math.max(1, Math.round(this.waitPlan(position)[position - 1] / 1000));
  }

  /**
   * Expected finish time (ms from now) of the first `count` jobs in dispatch order: each goes to
   * the slot that frees first, but not before the previous job of its conversation is done
   * (one at a time per conversation). Jobs beyond those waiting are assumed to be average ones.
   */
  private waitPlan(count: number): number[] {
    const now = this.now();
    const slots = Array.from({ length: this.concurrency }, () => 0);
    const conversationDone = new Map<string, number>();
    let i = 0;
    for (const job of this.inFlight) {
      if (i >= slots.length) break;
      slots[i] = Math.max(0, this.estimate.runMs(job.spec.tokens) - (now - job.startedAt));
      conversationDone.set(job.spec.conversation, slots[i++]);
    }
    const order = this.dispatchOrder();
    const finish: number[] = [];
    for (let p = 0; p < count; p++) {
      let free = 0;
      for (let s = 1; s < slots.length; s++) if (slots[s] < slots[free]) free = s;
      const job = order[p];
      const start = Math.max(slots[free], job ? (conversationDone.get(job.spec.conversation) ?? 0) : 0);
      slots[free] = start + this.estimate.runMs(job?.spec.tokens);
      if (job) conversationDone.set(job.spec.conversation, slots[free]);
      finish.push(slots[free]);
    }
    return finish;
  }

  /** Reserves the conversation's next place for a message that just arrived. */
  reserve(conversation: string, user: string): Reservation {
    const place: Placeholder = { placeholder: true };
    const conv = this.conversationQueues.get(conversation) ?? [];
    conv.push(place);
    this.conversationQueues.set(conversation, conv);
    let open = true;
    const leave = () => {
      if (!open) return false;
      open = false;
      const list = this.conversationQueues.get(conversation);
      const at = list?.indexOf(place) ?? -1;
      if (!list || at < 0) return false;
      list.splice(at, 1);
      if (list.length === 0) this.conversationQueues.delete(conversation);
      return true;
    };
    return {
      submit: <T>(spec: Omit<JobSpec<T>, 'conversation' | 'user'>): JobHandle<T> => {
        const at = open ? (this.conversationQueues.get(conversation)?.indexOf(place) ?? -1) : -1;
        open = false;
        return this.enqueue({ ...spec, conversation, user }, at);
      },
      release: () => {
        if (leave()) this.pump();
      },
    };
  }

  submit<T>(spec: JobSpec<T>): JobHandle<T> {
    return this.enqueue(spec, -1);
  }

  /** `place`: index of the caller's reservation in the conversation queue, or -1 to join at the end. */
  private enqueue<T>(spec: JobSpec<T>, place: number): JobHandle<T> {
    const conv = this.conversationQueues.get(spec.conversation) ?? [];
    const dropPlace = () => {
      if (place < 0) return;
      conv.splice(place, 1);
      if (conv.length === 0) this.conversationQueues.delete(spec.conversation);
      this.pump();
    };
    let resolve!: (v: T) => void;
    let reject!: (e: Error) => void;
    const result = new Promise<T>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const refuse = (e: SchedulerRejection): JobHandle<T> => {
      dropPlace();
      reject(e);
      return { result, cancel() {} };
    };
    if (!this.accepting) return refuse(new SchedulerRejection('shutting-down', 'The bot is shutting down; try again in a minute.', 60));
    if (!spec.trusted) {
      const wait = this.buckets.take(spec.user);
      if (wait > 0) return refuse(new SchedulerRejection('rate-limited', this.rateLimitMessage(wait), wait));
      if (this.queued >= this.options.maxQueued) {
        this.buckets.refund(spec.user);
        const eta = this.estimateSeconds(this.queued + 1);
        return refuse(new SchedulerRejection('busy', `I'm busy right now; try again in ~${eta} s.`, eta));
      }
    }
    const job: Job<T> = {
      id: this.nextId++,
      spec,
      enqueuedAt: this.now(),
      controller: new AbortController(),
      resolve,
      reject,
      started: false,
      startedAt: 0,
      lastPosition: 0,
      lastEta: -1,
    };
    const list = this.waiting.get(spec.user) ?? [];
    list.push(job as Job<unknown>);
    this.waiting.set(spec.user, list);
    if (place >= 0) conv[place] = job as Job<unknown>;
    else conv.push(job as Job<unknown>);
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

  /** This user's own limit, so nobody reads it as the bot being slow or behind. */
  private rateLimitMessage(wait: number): string {
    const rate = this.options.userRatePerMinute;
    const perMinute = Number.isInteger(rate) ? String(rate) : rate.toFixed(1);
    return `You have reached your own message limit (${perMinute} per minute, ${this.options.userBurst} at once); try again in ${wait} s. Other people are not affected.`;
  }

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
    while (this.running < this.concurrency) {
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
    job.startedAt = startedAt;
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
        // A cancelled job's time says nothing about how long an answer takes.
        if (outcome === 'ok' || outcome === 'error') this.estimate.record(runMs, job.spec.tokens);
        this.running--;
        this.inFlight.delete(job);
        this.busyConversations.delete(job.spec.conversation);
        this.observer.jobFinished?.(runMs, outcome);
        this.observer.queueChanged?.(this.queued, this.running);
        this.pump();
      }
    });
  }

  /** Waiting jobs in round-robin dispatch order: the i-th job of every user comes before any user's (i+1)-th. */
  private dispatchOrder(): Job<unknown>[] {
    const lists = [...this.waiting.values()];
    const order: Job<unknown>[] = [];
    for (let depth = 0; ; depth++) {
      let any = false;
      for (const list of lists) {
        const job = list[depth];
        if (!job) continue;
        any = true;
        order.push(job);
      }
      if (!any) break;
    }
    return order;
  }

  /** Tells waiting jobs their place, again when it or its ETA changed. */
  private announcePositions(): void {
    const order = this.dispatchOrder();
    if (order.length === 0) return;
    const plan = this.waitPlan(order.length);
    order.forEach((job, i) => {
      const position = i + 1;
      const eta = this.estimate.known ? Math.max(1, Math.round(plan[i] / 1000)) : undefined;
      if (job.lastPosition !== position || job.lastEta !== eta) {
        job.lastPosition = position;
        job.lastEta = eta;
        job.spec.onQueued?.(position, eta);
      }
    });
  }
}

/** Run time planned with (never shown as an ETA) before a run was measured or guessed. */
const DEFAULT_RUN_GUESS_MS = 10_000;

/**
 * Expected run time of a job. The starting guess counts only until something was measured; then
 * recent measurements weigh more. Jobs that say how many tokens they ask for are estimated per
 * token once such a job was measured, so a 128-word answer is expected to take longer than an
 * 8-word one.
 */
class RunEstimate {
  private meanMs: number | undefined;
  private perTokenMs: number | undefined;
  count = 0;

  constructor(private readonly guessMs: number | undefined) {}

  /** A run was measured, or the owner gave a guess: ETAs mean something. */
  get known(): boolean {
    return this.meanMs !== undefined || this.guessMs !== undefined;
  }

  get measuredMeanMs(): number | null {
    return this.meanMs === undefined ? null : Math.round(this.meanMs * 10) / 10;
  }

  record(runMs: number, tokens: number | undefined): void {
    this.count++;
    this.meanMs = blend(this.meanMs, runMs);
    if (tokens !== undefined && tokens > 0) this.perTokenMs = blend(this.perTokenMs, runMs / tokens);
  }

  runMs(tokens: number | undefined): number {
    if (tokens !== undefined && tokens > 0 && this.perTokenMs !== undefined) return this.perTokenMs * tokens;
    // Planning (a busy refusal's retry time) still needs a figure before the first run.
    return this.meanMs ?? this.guessMs ?? DEFAULT_RUN_GUESS_MS;
  }
}

/** An exponential moving average whose first value is the first measurement itself. */
function blend(previous: number | undefined, value: number): number {
  return previous === undefined ? value : previous * 0.7 + value * 0.3;
}

function abortOutcome(signal: AbortSignal): 'timeout' | 'cancelled' {
  const reason: unknown = signal.reason;
  return reason instanceof SchedulerRejection && reason.reason === 'timeout' ? 'timeout' : 'cancelled';
}
