/**
 * The gateway's Engine: jobs go to model workers through BullMQ on Redis instead of an
 * in-process model. The handler and adapters do not know the difference.
 *
 * Routing is the gateway's: each worker consumes its own BullMQ queue, and the gateway picks the
 * queue (the worker that last answered a conversation holds its kept KV cache, so it is preferred
 * for up to FROMAGE_AFFINITY_WAIT_MS; then any free worker). Delivery is exactly once per
 * request: a job may run again (its worker died, Redis lost it), but only the first outcome
 * reaches the waiting handler. Partial text comes over pub/sub; outcomes are read from the BullMQ
 * job itself, on a notice or by polling, so a notice lost in a Redis outage loses nothing.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { Gauge, type Registry } from 'prom-client';
import type { ReplyImage } from '../conversation/types.ts';
import { readManifest } from '../model/bundle.ts';
import { EngineInputError, type ChatResult, type Engine, type EngineInfo, type GenerationSettings, type PromptItem, type RunOptions } from '../model/engine-api.ts';
import { MANIFEST_FILE } from '../model/manifest.ts';
import { Tokenizer } from '../model/tokenizer/tokenizer.ts';
import { SchedulerRejection } from '../queue/scheduler.ts';
import { connectOrExplain, newClient } from './connect.ts';
import { KEYS, PREFIX, workerQueue } from './keys.ts';
import { affinityKey, decodeChatResult, epochMs, MAX_IMAGE_BYTES, MAX_JOB_BYTES, decodeImages, encodePrompt, encodeSettings, eventSchema, PROTOCOL_VERSION, requestKey, resultSchema, type JobPayload, type JobResult } from './protocol.ts';
import type { RedisTarget } from './redis-url.ts';
import { WorkerRegistry, type WorkerView } from './worker-registry.ts';

export interface RemoteEngineOptions {
  readonly redis: RedisTarget;
  readonly logger: Logger;
  /** A local bundle directory: only fromage.json and tokenizer.json are read (never the graphs). */
  readonly bundleDir?: string;
  /** How long a job waits for the worker holding its conversation before any free one takes it. */
  readonly affinityWaitMs: number;
  /** A job waiting this long while no worker at all can take it is refused as busy. */
  readonly noWorkerWaitMs: number;
  /** Nobody waits for an answer longer (FROMAGE_JOB_TIMEOUT_S); workers drop older jobs. */
  readonly jobTimeoutMs: number;
  /** A worker whose announcement is older is dead; its jobs run elsewhere. */
  readonly workerTtlMs: number;
  /** How long open() waits for workers to announce (their capacity sizes the scheduler). */
  readonly startWaitMs?: number;
  readonly pollMs?: number;
  /** How long the first connection may take before open() fails with the cause. */
  readonly connectTimeoutMs?: number;
  /** Gateway enqueue -> worker start, per job (benchmarks, metrics). */
  readonly onJobStarted?: (overheadMs: number, worker: string) => void;
}

/** Runs of one request at most (on different workers) before it fails. */
const MAX_ATTEMPTS = 3;
/** A job nobody collected (its gateway died) stays in Redis this long, for a restarted gateway asked again. */
const KEEP_MS = 10 * 60_000;
/** Which worker answered a conversation last, kept in Redis across gateway restarts. */
const AFFINITY_KEEP_MS = 60 * 60_000;

interface Waiter {
  resolve(r: JobResult): void;
  reject(e: Error): void;
  onText?: (text: string) => void;
}

interface Request {
  readonly key: string;
  readonly payload: JobPayload;
  readonly affinity?: string;
  readonly waiters: Set<Waiter>;
  readonly waitingSince: number;
  attempt: number;
  worker?: string;
  jobId?: string;
  dispatchedAt?: number;
  startedAt?: number;
  lastCheck: number;
  settled: boolean;
}

export class RemoteEngine implements Engine {
  private readonly registry: WorkerRegistry;
  private readonly queues = new Map<string, Queue>();
  private readonly requests = new Map<string, Request>();
  private readonly byJob = new Map<string, Request>();
  private readonly pending: Request[] = [];
  /** Conversation prefix -> the worker that last answered it (bounded, oldest dropped). */
  private readonly affinity = new Map<string, string>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private poller: NodeJS.Timeout | undefined;
  private outage = false;
  private closed = false;
  private hasIndex = false;
  private lastCapacity = 0;
  private readonly capacityListeners: ((slots: number) => void)[] = [];

  private constructor(
    private readonly o: RemoteEngineOptions,
    private readonly cmd: Redis,
    private readonly sub: Redis,
    private readonly bundle: { id: string; contextLength: number; nVisualTokens: number },
    private tokenizer: Tokenizer | undefined,
  ) {
    this.registry = new WorkerRegistry(cmd, o.workerTtlMs, (id, view) => this.workerDied(id, view), () => {
      const now = this.capacity();
      if (now !== this.lastCapacity) {
        this.lastCapacity = now;
        for (const l of this.capacityListeners) l(now);
      }
      this.pump();
    });
  }

  get info(): EngineInfo {
    // Any ready worker with an index can answer retrievals; before any announces, what the bundle's workers published.
    const ready = this.registry.eligible(this.bundle.id);
    const hasIndex = ready.length > 0 ? ready.some((w) => w.announcement.hasIndex === true) : this.hasIndex;
    return { bundleId: this.bundle.id, contextLength: this.bundle.contextLength, nVisualTokens: this.bundle.nVisualTokens, hasIndex };
  }

  static async open(o: RemoteEngineOptions): Promise<RemoteEngine> {
    const log = o.logger;
    const cmd = newClient(o.redis);
    const sub = newClient(o.redis);
    try {
      await connectOrExplain(cmd, o.redis, o.connectTimeoutMs);
    } catch (err) {
      sub.disconnect();
      throw err;
    }
    let bundle: { id: string; contextLength: number; nVisualTokens: number };
    let tokenizer: Tokenizer | undefined;
    if (o.bundleDir && existsSync(join(o.bundleDir, MANIFEST_FILE))) {
      const m = await readManifest(o.bundleDir);
      bundle = { id: m.id, contextLength: m.model.max_positions, nVisualTokens: m.model.n_visual_tokens };
      const tk = join(o.bundleDir, 'tokenizer.json');
      if (existsSync(tk)) tokenizer = await Tokenizer.fromFile(tk);
    } else {
      // No bundle files here: adopt the bundle the first worker announces.
      log.info({ redis: o.redis.redacted }, 'no local bundle manifest: waiting for a worker to announce its bundle (start one with `fromage worker`)');
      const info = await waitForAnnouncedBundle(cmd, log);
      bundle = info;
    }
    await cmd.set(KEYS.expectedBundle, bundle.id);
    const engine = new RemoteEngine(o, cmd, sub, bundle, tokenizer);
    await engine.start();
    return engine;
  }

  private async start(): Promise<void> {
    const log = this.o.logger;
    this.cmd.on('ready', () => {
      if (this.outage) log.info({ redis: this.o.redis.redacted }, 'Redis is back: checking every job still waiting for an answer');
      this.outage = false;
      this.registry.connected();
      void this.cmd.set(KEYS.expectedBundle, this.bundle.id).catch(() => {});
      for (const r of this.requests.values()) r.lastCheck = 0;
    });
    this.cmd.on('close', () => {
      if (!this.outage && !this.closed) log.warn({ redis: this.o.redis.redacted }, 'lost the connection to Redis: new requests are refused as busy until it is back; accepted ones wait');
      this.outage = true;
    });
    this.registry.connected();
    await this.sub.subscribe(KEYS.events);
    this.sub.on('message', (_c: string, text: string) => this.onEvent(text));
    await this.refreshBundleInfo();
    await this.registry.poll();
    const deadline = Date.now() + (this.o.startWaitMs ?? 0);
    while (this.capacity() === 0 && Date.now() < deadline) {
      await sleep(200);
      await this.registry.poll();
    }
    const workers = this.registry.eligible(this.bundle.id);
    log.info({ workers: workers.length, capacity: this.capacity(), bundle: this.bundle.id, redis: this.o.redis.redacted }, 'gateway: model workers through Redis');
    this.poller = setInterval(() => void this.tick().catch((err: Error) => log.debug({ err: err.message }, 'poll failed')), this.o.pollMs ?? 250);
  }

  /** Called with the workers' total slots whenever it changes (workers come, go, refuse). */
  onCapacityChange(listener: (slots: number) => void): void {
    this.capacityListeners.push(listener);
  }

  /** Jobs the ready workers for this bundle take at once, together. */
  capacity(): number {
    return this.registry.eligible(this.bundle.id).reduce((n, w) => n + w.announcement.capacity, 0);
  }

  private async tick(): Promise<void> {
    if (this.cmd.status !== 'ready') return;
    await this.registry.poll();
    const now = Date.now();
    if (!this.tokenizer || !this.hasIndex) await this.refreshBundleInfo();
    for (const r of [...this.requests.values()]) {
      if (r.settled || !r.jobId || now - r.lastCheck < 1000) continue;
      r.lastCheck = now;
      await this.check(r);
    }
  }

  private async refreshBundleInfo(): Promise<void> {
    const [info, tk] = await Promise.all([this.cmd.get(KEYS.bundleInfo(this.bundle.id)), this.tokenizer ? Promise.resolve(null) : this.cmd.get(KEYS.bundleTokenizer(this.bundle.id))]);
    if (info) {
      try {
        this.hasIndex = (JSON.parse(info) as { hasIndex?: unknown }).hasIndex === true;
      } catch {
        this.hasIndex = false;
      }
    }
    if (tk && !this.tokenizer) this.tokenizer = Tokenizer.fromJson(JSON.parse(tk), 'the tokenizer.json a worker published');
  }

  async countTokens(text: string): Promise<number> {
    if (!this.tokenizer) await this.refreshBundleInfo();
    if (!this.tokenizer) throw new SchedulerRejection('busy', 'No model worker has started yet; try again in a minute.', 60);
    return this.tokenizer.encode(text, { addSpecialTokens: false }).length;
  }

  async chat(prompt: readonly PromptItem[], settings: GenerationSettings, options: RunOptions = {}): Promise<ChatResult> {
    checkJobSize(prompt);
    const payload: JobPayload = { v: PROTOCOL_VERSION, bundleId: this.bundle.id, deadline: Date.now() + this.o.jobTimeoutMs, kind: 'chat', prompt: encodePrompt(prompt), settings: encodeSettings(settings) };
    const r = await this.submit(payload, affinityKey(prompt), options);
    if (r.kind !== 'chat') throw new Error('a model worker answered a chat job with the wrong result');
    return decodeChatResult(r);
  }

  async retrieve(query: string, count: number, options: RunOptions = {}): Promise<readonly ReplyImage[]> {
    const payload: JobPayload = { v: PROTOCOL_VERSION, bundleId: this.bundle.id, deadline: Date.now() + this.o.jobTimeoutMs, kind: 'retrieve', query, count };
    const r = await this.submit(payload, undefined, options);
    return r.kind === 'retrieve' ? decodeImages(r.images) : [];
  }

  private async submit(payload: JobPayload, affinity: string | undefined, options: RunOptions): Promise<JobResult> {
    if (this.closed) throw new SchedulerRejection('shutting-down', 'The bot is restarting; send your message again in a minute.');
    if (this.cmd.status !== 'ready') throw new SchedulerRejection('busy', 'I cannot reach my model workers right now; try again in a minute.', 30);
    options.signal?.throwIfAborted();
    const { deadline: _deadline, ...identity } = payload;
    const key = requestKey(identity);
    return new Promise<JobResult>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, onText: options.onText };
      const existing = this.requests.get(key);
      const req: Request = existing ?? { key, payload, affinity, waiters: new Set(), waitingSince: Date.now(), attempt: 0, lastCheck: 0, settled: false };
      req.waiters.add(waiter);
      options.signal?.addEventListener(
        'abort',
        () => {
          if (!req.waiters.delete(waiter)) return;
          reject(options.signal!.reason instanceof Error ? options.signal!.reason : new Error('cancelled'));
          if (req.waiters.size === 0 && !req.settled) this.abandon(req);
        },
        { once: true },
      );
      if (existing) return;
      this.requests.set(key, req);
      void this.attachOrQueue(req).catch((err: Error) => this.settle(req, err));
    });
  }

  /** A job already queued or answered for the same request (by a gateway before a restart) is reused. */
  private async attachOrQueue(req: Request): Promise<void> {
    const known = await this.cmd.get(KEYS.request(req.key));
    if (known) {
      const ref = parseRef(known);
      if (ref) {
        const job = await this.queue(ref.worker).getJob(ref.jobId);
        const alive = this.registry.workers.has(ref.worker);
        // Answered, or still on a live worker: wait for that one. A failed or orphaned job runs afresh.
        req.attempt = ref.attempt;
        if (job && (job.finishedOn ? !job.failedReason : alive)) {
          req.worker = ref.worker;
          req.jobId = ref.jobId;
          req.dispatchedAt = epochMs();
          this.byJob.set(ref.jobId, req);
          this.registry.workers.get(ref.worker)?.jobs.add(ref.jobId);
          this.o.logger.debug({ job: ref.jobId }, 'attached to a job queued before');
          await this.check(req);
          return;
        }
      }
    }
    if (req.affinity && !this.affinity.has(req.affinity)) {
      // Where this conversation was answered before this gateway started, if Redis remembers.
      const home = await this.cmd.get(KEYS.affinity(req.affinity));
      if (home && !this.affinity.has(req.affinity)) this.affinity.set(req.affinity, home);
    }
    this.pending.push(req);
    this.pump();
  }

  /** Gives waiting requests to workers: preferred worker first, any free one after the affinity wait. */
  private pump(): void {
    if (this.closed || this.cmd.status !== 'ready') return;
    const now = Date.now();
    for (const req of [...this.pending]) {
      const eligible = this.registry.eligible(this.bundle.id);
      const free = eligible.filter((w) => this.registry.free(w) > 0);
      // Every slot taken: nothing below can be dispatched, and the job just dispatched is measured
      // from before its add, so the rest of this loop would only delay that add's write.
      if (free.length === 0 && eligible.length > 0) break;
      if (free.length === 0) {
        if (eligible.length === 0 && now - req.waitingSince > this.o.noWorkerWaitMs) {
          this.pending.splice(this.pending.indexOf(req), 1);
          this.settle(req, new SchedulerRejection('busy', 'No model worker is running right now; try again in a few minutes.', 120));
        }
        continue;
      }
      const preferred = req.affinity ? this.affinity.get(req.affinity) : undefined;
      let chosen = free.find((w) => w.announcement.id === preferred);
      if (!chosen && preferred && eligible.some((w) => w.announcement.id === preferred) && now - req.waitingSince < this.o.affinityWaitMs) {
        this.later(req.waitingSince + this.o.affinityWaitMs - now);
        continue;
      }
      chosen ??= free.sort((a, b) => this.registry.free(b) - this.registry.free(a) || a.jobs.size - b.jobs.size || a.announcement.id.localeCompare(b.announcement.id))[0];
      this.pending.splice(this.pending.indexOf(req), 1);
      void this.dispatch(req, chosen).catch((err: Error) => this.redispatch(req, `could not queue the job: ${err.message}`));
    }
  }

  private later(ms: number): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      this.pump();
    }, Math.max(1, ms));
    this.timers.add(t);
  }

  private async dispatch(req: Request, w: WorkerView): Promise<void> {
    req.attempt++;
    const worker = w.announcement.id;
    const jobId = `${req.key}-${req.attempt}`;
    req.worker = worker;
    req.jobId = jobId;
    req.startedAt = undefined;
    req.lastCheck = Date.now();
    this.byJob.set(jobId, req);
    w.jobs.add(jobId);
    req.dispatchedAt = epochMs();
    await this.queue(worker).add(req.payload.kind, req.payload, { jobId, attempts: 1, removeOnComplete: { age: KEEP_MS / 1000 }, removeOnFail: { age: KEEP_MS / 1000 } });
    await this.cmd.set(KEYS.request(req.key), JSON.stringify({ worker, jobId, attempt: req.attempt }), 'PX', KEEP_MS);
  }

  private queue(worker: string): Queue {
    let q = this.queues.get(worker);
    if (!q) {
      q = new Queue(workerQueue(worker), { connection: this.cmd, prefix: PREFIX });
      q.on('error', () => {});
      this.queues.set(worker, q);
    }
    return q;
  }

  private onEvent(text: string): void {
    let e;
    try {
      const parsed = eventSchema.safeParse(JSON.parse(text));
      if (!parsed.success) return;
      e = parsed.data;
    } catch {
      return;
    }
    const req = this.byJob.get(e.job);
    if (!req || req.settled || req.jobId !== e.job) return;
    if (e.t === 'progress') {
      for (const w of req.waiters) w.onText?.(e.text);
    } else if (e.t === 'started') {
      if (req.startedAt === undefined && req.dispatchedAt !== undefined) {
        req.startedAt = Date.now();
        this.o.onJobStarted?.(e.at - req.dispatchedAt, e.worker);
      }
    } else void this.check(req).catch(() => {});
  }

  /** Reads the job's outcome from Redis, if it has one. */
  private async check(req: Request): Promise<void> {
    if (req.settled || !req.jobId || !req.worker) return;
    const jobId = req.jobId;
    const job = await this.queue(req.worker).getJob(jobId);
    if (req.settled || req.jobId !== jobId) return;
    if (!job) {
      if (this.cmd.status === 'ready') this.redispatch(req, 'the job vanished from Redis');
      return;
    }
    if (!job.finishedOn) return;
    // Read once and handed to the waiting handler: Redis need not keep the prompt and the answer's images.
    void job.remove().catch(() => {});
    if (!job.failedReason) {
      const parsed = resultSchema.safeParse(job.returnvalue);
      if (parsed.success) {
        if (req.affinity) this.remember(req.affinity, req.worker);
        void this.cmd.del(KEYS.request(req.key)).catch(() => {});
        this.settle(req, parsed.data);
      } else this.redispatch(req, 'a worker returned a malformed answer');
      return;
    }
    const reason = job.failedReason;
    const kind = reason.slice(0, reason.indexOf(':'));
    const detail = reason.slice(reason.indexOf(':') + 1).trim();
    if (kind === 'input') return this.settle(req, new EngineInputError(detail));
    if (kind === 'expired') return this.settle(req, new SchedulerRejection('timeout', 'That took too long; try again, perhaps with a shorter message.'));
    if (kind === 'bundle') {
      const view = this.registry.workers.get(req.worker);
      if (view) view.announcement = { ...view.announcement, state: 'refusing', reason: detail };
      this.o.logger.warn({ worker: req.worker, reason: detail }, 'a worker refused a job: its bundle differs');
    }
    this.redispatch(req, reason);
  }

  private redispatch(req: Request, why: string): void {
    if (req.settled) return;
    this.release(req);
    const old = req.jobId;
    if (old) void this.cmd.publish(KEYS.cancel, old).catch(() => {});
    req.jobId = undefined;
    req.worker = undefined;
    if (req.attempt >= MAX_ATTEMPTS) {
      this.o.logger.error({ request: req.key, why }, 'giving up on a job after several workers failed it');
      this.settle(req, new Error(`the model workers failed this job ${req.attempt} times (last: ${why})`));
      return;
    }
    this.o.logger.warn({ request: req.key, job: old, why }, 'running the job again on another worker');
    this.pending.unshift(req);
    this.pump();
  }

  private release(req: Request): void {
    if (req.jobId) {
      this.byJob.delete(req.jobId);
      if (req.worker) this.registry.workers.get(req.worker)?.jobs.delete(req.jobId);
    }
  }

  private settle(req: Request, outcome: JobResult | Error): void {
    if (req.settled) return;
    req.settled = true;
    this.release(req);
    this.requests.delete(req.key);
    const at = this.pending.indexOf(req);
    if (at >= 0) this.pending.splice(at, 1);
    for (const w of req.waiters) {
      if (outcome instanceof Error) w.reject(outcome);
      else w.resolve(outcome);
    }
    req.waiters.clear();
    this.pump();
  }

  /** Nobody waits any more: the worker is told to stop and the request is forgotten. */
  private abandon(req: Request): void {
    const { jobId, worker } = req;
    this.settle(req, new Error('cancelled'));
    void this.cmd.del(KEYS.request(req.key)).catch(() => {});
    if (jobId && worker) {
      void this.cmd.publish(KEYS.cancel, jobId).catch(() => {});
      void this.queue(worker)
        .getJob(jobId)
        .then((j) => j?.remove())
        .catch(() => {});
    }
  }

  private remember(affinity: string, worker: string): void {
    if (this.affinity.get(affinity) !== worker) void this.cmd.set(KEYS.affinity(affinity), worker, 'PX', AFFINITY_KEEP_MS).catch(() => {});
    this.affinity.delete(affinity);
    this.affinity.set(affinity, worker);
    if (this.affinity.size > 100_000) this.affinity.delete(this.affinity.keys().next().value!);
  }

  private workerDied(id: string, view: WorkerView): void {
    this.o.logger.warn({ worker: id, jobs: view.jobs.size }, 'a model worker stopped announcing itself: its unanswered jobs run on another worker');
    const q = this.queues.get(id);
    void (async () => {
      for (const jobId of [...view.jobs]) {
        const req = this.byJob.get(jobId);
        if (!req) continue;
        await this.check(req).catch(() => {});
        if (!req.settled && req.jobId === jobId) this.redispatch(req, `worker ${id} died`);
      }
      for (const [k, w] of this.affinity) if (w === id) this.affinity.delete(k);
      if (q) {
        this.queues.delete(id);
        await q.obliterate({ force: true }).catch(() => {});
        await q.close().catch(() => {});
      }
    })();
  }

  /** For /healthz: the workers seen, never the Redis password. */
  health(): Record<string, unknown> {
    return {
      redis: { url: this.o.redis.redacted, connected: this.cmd.status === 'ready' },
      capacity: this.capacity(),
      waitingForWorker: this.pending.length,
      workers: [...this.registry.workers.values()].map((w) => ({
        id: w.announcement.id,
        host: w.announcement.host,
        device: w.announcement.device,
        bundle: w.announcement.bundleId,
        state: w.announcement.state === 'ready' ? (w.announcement.running > 0 ? 'busy' : 'idle') : w.announcement.state,
        ...(w.announcement.reason ? { reason: w.announcement.reason } : {}),
        running: w.announcement.running,
        capacity: w.announcement.capacity,
        tokensPerSecond: Number(w.announcement.tokensPerSecond.toFixed(2)),
        jobsDone: w.announcement.jobsDone,
        lastSeen: new Date(w.announcement.lastSeen).toISOString(),
      })),
    };
  }

  /** Queue depth and per-worker speed on /metrics. */
  registerMetrics(registry: Registry): void {
    const waitingJobs = () => {
      let waiting = this.pending.length;
      for (const r of this.requests.values()) if (r.jobId && r.startedAt === undefined) waiting++;
      return waiting;
    };
    const workers = () => [...this.registry.workers.values()];
    new Gauge({
      name: 'fromage_remote_queue_depth',
      help: 'Jobs waiting for a model worker (at the gateway and in the workers\' queues, not yet started)',
      registers: [registry],
      collect() {
        this.set(waitingJobs());
      },
    });
    new Gauge({
      name: 'fromage_worker_tokens_per_second',
      help: 'Decode speed each model worker announces',
      labelNames: ['worker', 'device'],
      registers: [registry],
      collect() {
        this.reset();
        for (const w of workers()) this.set({ worker: w.announcement.id, device: w.announcement.device }, w.announcement.tokensPerSecond);
      },
    });
    new Gauge({
      name: 'fromage_workers',
      help: 'Model workers seen, by state',
      labelNames: ['state'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of ['ready', 'refusing', 'stopping']) this.set({ state: s }, workers().filter((w) => w.announcement.state === s).length);
      },
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.poller);
    for (const t of this.timers) clearTimeout(t);
    for (const req of [...this.requests.values()]) this.settle(req, new SchedulerRejection('shutting-down', 'The bot is restarting; send your message again in a minute.'));
    await Promise.allSettled([...this.queues.values()].map((q) => q.close()));
    await Promise.allSettled([this.sub.quit(), this.cmd.quit()]);
  }
}

/** Redis carries each job whole: a conversation whose images outgrow the bounds is told so, not sent. */
function checkJobSize(prompt: readonly PromptItem[]): void {
  let bytes = 0;
  for (const p of prompt) {
    if (p.type === 'text') bytes += Buffer.byteLength(p.text);
    else {
      if (p.image.data.length > MAX_IMAGE_BYTES)
        throw new EngineInputError(`An image in this conversation is ${(p.image.data.length / 2 ** 20).toFixed(1)} MiB, more than the ${MAX_IMAGE_BYTES / 2 ** 20} MiB a model worker accepts; send a smaller one, or say reset to start afresh.`);
      bytes += Math.ceil(p.image.data.length / 3) * 4;
    }
  }
  if (bytes > MAX_JOB_BYTES)
    throw new EngineInputError(`This conversation's images add up to ${(bytes / 2 ** 20).toFixed(0)} MiB, more than the ${MAX_JOB_BYTES / 2 ** 20} MiB a job to a model worker may hold; say reset to start afresh.`);
}

function parseRef(text: string): { worker: string; jobId: string; attempt: number } | undefined {
  try {
    const r = JSON.parse(text) as { worker?: unknown; jobId?: unknown; attempt?: unknown };
    if (typeof r.worker === 'string' && typeof r.jobId === 'string' && typeof r.attempt === 'number' && /^[A-Za-z0-9_-]{1,200}$/.test(r.worker)) return { worker: r.worker, jobId: r.jobId, attempt: r.attempt };
  } catch {
    return undefined;
  }
  return undefined;
}

async function waitForAnnouncedBundle(cmd: Redis, log: Logger): Promise<{ id: string; contextLength: number; nVisualTokens: number }> {
  let lastLog = Date.now();
  for (;;) {
    const ids = await cmd.smembers(KEYS.workers);
    for (const id of ids) {
      const a = await cmd.get(KEYS.worker(id));
      if (!a) continue;
      const bundleId = (JSON.parse(a) as { bundleId?: unknown }).bundleId;
      if (typeof bundleId !== 'string') continue;
      const info = await cmd.get(KEYS.bundleInfo(bundleId));
      if (!info) continue;
      const i = JSON.parse(info) as Partial<EngineInfo>;
      if (typeof i.contextLength === 'number' && typeof i.nVisualTokens === 'number') return { id: bundleId, contextLength: i.contextLength, nVisualTokens: i.nVisualTokens };
    }
    if (Date.now() - lastLog > 10_000) {
      lastLog = Date.now();
      log.info('still waiting for a model worker to announce its bundle');
    }
    await sleep(500);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
