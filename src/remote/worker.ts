/**
 * `fromage worker`: one model (the same engine `fromage serve` runs in-process, batched and with
 * kept caches) answering the jobs the gateway routes to this worker's BullMQ queue. It announces
 * itself under a key that expires unless its heartbeat refreshes it, so a gateway notices a
 * worker that died (even by SIGKILL) within the TTL and runs its jobs elsewhere.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Logger } from 'pino';
import { EngineInputError, type Engine } from '../model/engine-api.ts';
import { connectOrExplain, newClient } from './connect.ts';
import { KEYS, PREFIX, workerQueue } from './keys.ts';
import { decodePrompt, epochMs, encodeChatResult, encodeImages, jobSchema, PROTOCOL_VERSION, type Announcement, type JobResult, type WorkerEvent } from './protocol.ts';
import type { RedisTarget } from './redis-url.ts';
import { lowerOtherThreads } from './thread-priority.ts';

export interface WorkerOptions {
  readonly redis: RedisTarget;
  readonly engine: Engine;
  /** Where tokenizer.json is, published so a gateway needs no bundle files. */
  readonly bundleDir: string;
  /** Jobs at once: the engine's batch. */
  readonly capacity: number;
  readonly device: string;
  readonly logger: Logger;
  readonly id?: string;
  readonly heartbeatMs?: number;
  /** The announcement expires this long after the last heartbeat. */
  readonly ttlMs?: number;
  /** How long the first connection may take before start fails with the cause. */
  readonly connectTimeoutMs?: number;
  /**
   * Nice value for every thread of this process but the event loop's (model compute, GC
   * helpers, pools), re-applied on each heartbeat for threads started later; 0 (the default
   * here) leaves priorities alone. `fromage worker` passes 10 (see thread-priority.ts).
   */
  readonly computeNice?: number;
}

export interface RunningWorker {
  readonly id: string;
  stop(): Promise<void>;
}

/** Failure reasons the gateway understands (the part before the first colon). */
export const FAIL = { input: 'input', bundle: 'bundle', invalid: 'invalid', expired: 'expired', engine: 'engine' } as const;

export function newWorkerId(): string {
  const host = hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 40) || 'host';
  return `${host}-${process.pid}-${randomBytes(3).toString('hex')}`;
}

export async function startWorker(o: WorkerOptions): Promise<RunningWorker> {
  const id = o.id ?? newWorkerId();
  const log = o.logger.child({ worker: id });
  const heartbeatMs = o.heartbeatMs ?? 1000;
  const ttlMs = o.ttlMs ?? 5000;
  const bundleId = o.engine.info.bundleId;
  const cmd = newClient(o.redis);
  await connectOrExplain(cmd, o.redis, o.connectTimeoutMs);
  const sub = newClient(o.redis);
  const controllers = new Map<string, AbortController>();
  let running = 0;
  let jobsDone = 0;
  let tokensPerSecond = 0;
  let state: Announcement['state'] = 'ready';
  let reason: string | undefined;
  const startedAt = Date.now();
  const computeNice = o.computeNice ?? 0;
  const lowerCompute = () => {
    try {
      return lowerOtherThreads(computeNice);
    } catch (err) {
      log.debug({ err: (err as Error).message }, 'could not lower the compute threads\' priority');
      return undefined;
    }
  };
  if (computeNice > 0) {
    const r = lowerCompute();
    if (r?.supported) log.info({ nice: computeNice, threads: r.lowered.length }, 'model compute and helper threads run at a lower priority than the event loop that takes jobs');
    else log.info({ nice: computeNice, platform: process.platform }, 'thread priorities left alone: only Linux can lower single threads');
  }

  // What a gateway without bundle files needs: the figures of EngineInfo and the tokenizer.
  const tokenizer = await readFile(join(o.bundleDir, 'tokenizer.json'), 'utf8');
  await cmd.set(KEYS.bundleInfo(bundleId), JSON.stringify(o.engine.info));
  await cmd.set(KEYS.bundleTokenizer(bundleId), tokenizer, 'NX');

  const checkExpected = async () => {
    const expected = await cmd.get(KEYS.expectedBundle);
    const next = expected && expected !== bundleId ? 'refusing' : 'ready';
    if (next === 'refusing' && state !== 'refusing')
      log.warn({ bundle: bundleId, expected }, `refusing jobs: this worker serves bundle ${bundleId} but the gateway expects ${expected}; point FROMAGE_BUNDLE at the same bundle as the gateway`);
    if (state !== 'stopping') {
      state = next;
      reason = next === 'refusing' ? `bundle ${bundleId} is not the expected ${expected}` : undefined;
    }
  };

  const announce = async () => {
    if (cmd.status !== 'ready') return;
    await checkExpected();
    const a: Announcement = { id, host: hostname(), device: o.device, bundleId, capacity: o.capacity, running, state, ...(reason ? { reason } : {}), tokensPerSecond, hasIndex: o.engine.info.hasIndex, jobsDone, startedAt, lastSeen: Date.now() };
    await cmd.multi().set(KEYS.worker(id), JSON.stringify(a), 'PX', ttlMs).sadd(KEYS.workers, id).exec();
  };
  await announce();
  const beat = setInterval(() => {
    // Threads started since (a restarted model thread, a pool created on first use) join the others.
    if (computeNice > 0) lowerCompute();
    void announce().catch((err: Error) => log.debug({ err: err.message }, 'heartbeat failed'));
  }, heartbeatMs);

  await sub.subscribe(KEYS.cancel);
  sub.on('message', (_channel: string, message: string) => {
    const c = controllers.get(message.slice(0, 300));
    if (c) c.abort(new Error('cancelled by the gateway'));
  });

  const publish = (e: WorkerEvent) => void cmd.publish(KEYS.events, JSON.stringify(e)).catch(() => {});

  const answer = async (job: Job, _token?: string, signal?: AbortSignal): Promise<JobResult> => {
    const parsed = jobSchema.safeParse(job.data);
    if (!parsed.success || job.data?.v !== PROTOCOL_VERSION) {
      log.warn({ job: job.id, problem: parsed.success ? 'protocol version' : parsed.error.issues[0]?.message }, 'refusing an invalid job');
      throw new UnrecoverableError(`${FAIL.invalid}: the job does not match protocol ${PROTOCOL_VERSION}`);
    }
    const p = parsed.data;
    if (p.bundleId !== bundleId) {
      log.warn({ job: job.id, bundle: bundleId, expected: p.bundleId }, `refusing a job: this worker serves bundle ${bundleId}, the job expects ${p.bundleId}`);
      throw new UnrecoverableError(`${FAIL.bundle}: this worker serves bundle ${bundleId}, the job expects ${p.bundleId}`);
    }
    if (Date.now() > p.deadline) throw new UnrecoverableError(`${FAIL.expired}: nobody waits for this answer any more`);
    const jobId = String(job.id);
    const controller = new AbortController();
    signal?.addEventListener('abort', () => controller.abort(signal.reason), { once: true });
    const timer = setTimeout(() => controller.abort(new Error('deadline passed')), Math.max(0, p.deadline - Date.now()));
    controllers.set(jobId, controller);
    running++;
    publish({ t: 'started', job: jobId, worker: id, at: epochMs() });
    const t0 = performance.now();
    let lastSent = 0;
    const onText = (text: string) => {
      const now = performance.now();
      if (now - lastSent < 50) return;
      lastSent = now;
      publish({ t: 'progress', job: jobId, text });
    };
    try {
      if (p.kind === 'chat') {
        const r = await o.engine.chat(decodePrompt(p.prompt), p.settings, { signal: controller.signal, onText });
        const seconds = (performance.now() - t0) / 1000;
        if (r.generatedTokens > 0 && seconds > 0) tokensPerSecond = tokensPerSecond === 0 ? r.generatedTokens / seconds : 0.7 * tokensPerSecond + 0.3 * (r.generatedTokens / seconds);
        return encodeChatResult(r, id);
      }
      const images = await o.engine.retrieve(p.query, p.count, { signal: controller.signal });
      return { kind: 'retrieve', images: encodeImages(images), worker: id };
    } catch (err) {
      if (err instanceof EngineInputError) throw new UnrecoverableError(`${FAIL.input}: ${err.message}`);
      if (controller.signal.aborted) throw new UnrecoverableError(`${FAIL.expired}: cancelled`);
      log.error({ err, job: jobId }, 'job failed');
      throw new UnrecoverableError(`${FAIL.engine}: ${(err as Error).message}`);
    } finally {
      clearTimeout(timer);
      controllers.delete(jobId);
      running--;
      jobsDone++;
    }
  };

  // BullMQ duplicates this connection for its blocking reads.
  const queueConnection = newClient(o.redis);
  const worker = new Worker(workerQueue(id), answer, {
    connection: queueConnection,
    prefix: PREFIX,
    concurrency: o.capacity,
    // Long enough for a Redis restart of ~20 s; the gateway's heartbeat watch is what catches a dead worker.
    lockDuration: 60_000,
    maxStalledCount: 5,
    drainDelay: 1,
  });
  worker.on('error', (err: Error) => log.debug({ err: err.message }, 'queue connection error (reconnecting)'));
  worker.on('completed', (job: Job) => publish({ t: 'done', job: String(job.id) }));
  worker.on('failed', (job: Job | undefined) => {
    if (job) publish({ t: 'done', job: String(job.id) });
  });
  await worker.waitUntilReady();
  log.info({ bundle: bundleId, capacity: o.capacity, device: o.device, redis: o.redis.redacted }, 'worker ready: waiting for jobs');

  let stopped: Promise<void> | undefined;
  return {
    id,
    stop() {
      stopped ??= (async () => {
        state = 'stopping';
        await announce().catch(() => {});
        // Running answers finish; the gateway sends nothing new to a stopping worker.
        await worker.close();
        clearInterval(beat);
        await cmd.multi().del(KEYS.worker(id)).srem(KEYS.workers, id).exec().catch(() => {});
        await Promise.allSettled([sub.quit(), cmd.quit(), queueConnection.quit()]);
        log.info('worker stopped');
      })();
      return stopped;
    },
  };
}
