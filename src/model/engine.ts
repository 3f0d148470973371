/**
 * FromageEngine: the Engine the service uses. The model runs in a worker thread (loaded once,
 * reused across jobs) so the event loop never blocks. Jobs go to the worker as they come: it
 * decodes up to `batch` answers together and queues the rest (the scheduler bounds how many it
 * hands over). If the worker dies (crash, out of memory, restartWorker), the jobs in flight fail
 * with a message and the next job starts a fresh worker.
 */
import { randomInt } from 'node:crypto';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { ImageInputError, type ReplyImage, type Segment } from '../conversation/types.ts';
import { EngineInputError, type ChatResult, type Engine, type EngineInfo, type GenerationSettings, type PromptItem, type RunOptions } from './engine-api.ts';
import { BundleError, CancelledError } from './errors.ts';
import type { FromWorker, JobRequest, JobResult, ServingStats, WireError, WireImage, WorkerInit, WorkerInfo } from './worker-protocol.ts';
import { Tokenizer } from './tokenizer/tokenizer.ts';
import { KvBudgetError } from '../serving/kv-config.ts';

export interface EngineOptions extends WorkerInit {
  /** The worker script (tests substitute one); default worker-entry.mjs next to this file. */
  readonly workerEntry?: URL;
  /** Receives the worker's warnings (e.g. the CUDA fallback). Default: console.warn. */
  readonly onLog?: (level: 'warn' | 'info', message: string) => void;
}

function workerInit(o: EngineOptions): WorkerInit {
  // Functions cannot cross into the worker.
  const { onLog: _onLog, workerEntry: _entry, ...init } = o;
  return init;
}

/** The worker stopped while a job was running; the job did not complete. */
export class EngineWorkerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EngineWorkerError';
  }
}

function fromWire(e: WireError): Error {
  switch (e.name) {
    case 'EngineInputError':
      return new EngineInputError(e.message);
    case 'ImageInputError':
      return new ImageInputError(e.message, (e.reason ?? 'corrupt') as ImageInputError['reason']);
    case 'BundleError':
    case 'IndexError':
      return new BundleError(e.message);
    case 'CancelledError':
      return new CancelledError(e.message);
    case 'KvBudgetError':
      return new KvBudgetError(e.message);
    default: {
      const err = new Error(e.message);
      err.name = e.name;
      return err;
    }
  }
}

/** Saved and uploaded under the row of its own index: stable whatever other indexes are loaded. */
export function replyImage(i: WireImage): ReplyImage {
  const ext = i.contentType === 'image/png' ? 'png' : i.contentType === 'image/webp' ? 'webp' : 'jpg';
  return {
    data: Buffer.from(i.data.buffer, i.data.byteOffset, i.data.byteLength),
    contentType: i.contentType,
    filename: `retrieved-${i.indexRow ?? i.row}.${ext}`,
    source: i.url,
    score: i.score,
    ...(i.width ? { width: i.width } : {}),
    ...(i.height ? { height: i.height } : {}),
  };
}

interface PendingJob {
  readonly resolve: (r: JobResult) => void;
  readonly reject: (e: Error) => void;
  readonly onText?: (text: string) => void;
}

interface LiveWorker {
  readonly worker: Worker;
  readonly info: WorkerInfo;
  readonly pending: Map<number, PendingJob>;
  readonly statsWaiting: Map<number, (s: ServingStats | undefined) => void>;
  dead: boolean;
}

export class FromageEngine implements Engine {
  private live: LiveWorker | undefined;
  private nextId = 1;
  /** A replacement worker being started: concurrent jobs wait for the same one. */
  private spawning: Promise<LiveWorker> | undefined;
  private closed = false;

  private constructor(
    private readonly options: EngineOptions,
    first: LiveWorker,
    /** A main-thread copy: counting tokens must not wait behind answers in the worker's queue. */
    private readonly tokenizer: Tokenizer,
  ) {
    this.live = first;
    this.info = FromageEngine.toInfo(first.info);
  }

  info: EngineInfo;

  /** Starts the worker and waits until the bundle (and index) are loaded. */
  static async start(options: EngineOptions): Promise<FromageEngine> {
    const worker = await FromageEngine.spawn(options);
    return new FromageEngine(options, worker, await Tokenizer.fromFile(join(options.bundleDir, 'tokenizer.json')));
  }

  private static toInfo(w: WorkerInfo): EngineInfo {
    return { bundleId: w.bundleId, contextLength: w.contextLength, nVisualTokens: w.nVisualTokens, hasIndex: w.hasIndex };
  }

  private static spawn(options: EngineOptions): Promise<LiveWorker> {
    const worker = new Worker(options.workerEntry ?? new URL('./worker-entry.mjs', import.meta.url), { workerData: workerInit(options) });
    const log = options.onLog ?? ((_level: string, message: string) => console.warn(message));
    return new Promise<LiveWorker>((resolve, reject) => {
      // Only our own listeners are removed: Worker keeps internal ones on its emitter.
      const onError = (err: Error): void => fail(new EngineWorkerError(`the model worker failed to start: ${err.message}`));
      const onExit = (code: number): void => fail(new EngineWorkerError(`the model worker exited during start-up (code ${code})`));
      const detach = (): void => {
        worker.off('error', onError);
        worker.off('exit', onExit);
        worker.off('message', onStartMessage);
      };
      const fail = (err: Error): void => {
        detach();
        void worker.terminate();
        reject(err);
      };
      worker.on('error', onError);
      worker.on('exit', onExit);
      function onStartMessage(msg: FromWorker): void {
        if (msg.type === 'log') return log(msg.level, msg.message);
        if (msg.type === 'init-error') return fail(fromWire(msg.error));
        if (msg.type !== 'ready') return fail(new EngineWorkerError(`unexpected first message from the model worker: ${msg.type}`));
        detach();
        const live: LiveWorker = { worker, info: msg.info, pending: new Map(), statsWaiting: new Map(), dead: false };
        worker.on('message', (m: FromWorker) => (m.type === 'log' ? log(m.level, m.message) : FromageEngine.dispatch(live, m)));
        const die = (why: string): void => {
          if (live.dead) return;
          live.dead = true;
          for (const answer of live.statsWaiting.values()) answer(undefined);
          live.statsWaiting.clear();
          for (const job of live.pending.values()) job.reject(new EngineWorkerError(`the model worker stopped (${why}) before the job finished; it will be restarted for the next job`));
          live.pending.clear();
        };
        // A dying worker is replaced on the next job (see worker()).
        worker.on('error', (err) => die(err.message));
        worker.on('exit', (code) => die(`exit code ${code}`));
        resolve(live);
      }
      worker.on('message', onStartMessage);
    });
  }

  private static dispatch(live: LiveWorker, msg: FromWorker): void {
    if (msg.type === 'ready' || msg.type === 'init-error' || msg.type === 'log') return;
    if (msg.type === 'stats') {
      live.statsWaiting.get(msg.id)?.(msg.stats);
      live.statsWaiting.delete(msg.id);
      return;
    }
    const job = live.pending.get(msg.id);
    if (!job) return;
    if (msg.type === 'text') {
      job.onText?.(msg.text);
      return;
    }
    live.pending.delete(msg.id);
    if (msg.type === 'result') job.resolve(msg.result);
    else job.reject(fromWire(msg.error));
  }

  private async worker(): Promise<LiveWorker> {
    if (this.closed) throw new EngineWorkerError('the engine is closed');
    if (this.live && !this.live.dead) return this.live;
    this.live = undefined;
    if (!this.spawning) {
      this.spawning = FromageEngine.spawn(this.options).finally(() => (this.spawning = undefined));
      const live = await this.spawning;
      if (this.closed) {
        this.retire(live, 'the engine was closed');
        throw new EngineWorkerError('the engine is closed');
      }
      this.live = live;
      this.info = FromageEngine.toInfo(live.info);
      return live;
    }
    await this.spawning;
    return this.worker();
  }

  /** Hands a job to the worker at once; the worker batches or queues it. */
  private async submit(job: JobRequest, options: RunOptions = {}): Promise<JobResult> {
    if (options.signal?.aborted) throw new CancelledError();
    const live = await this.worker();
    if (options.signal?.aborted) throw new CancelledError();
    const id = this.nextId++;
    return new Promise<JobResult>((resolve, reject) => {
      const onAbort = (): void => live.worker.postMessage({ type: 'cancel', id });
      options.signal?.addEventListener('abort', onAbort, { once: true });
      const done = <T>(f: (v: T) => void) => (v: T): void => {
        options.signal?.removeEventListener('abort', onAbort);
        f(v);
      };
      live.pending.set(id, { resolve: done(resolve), reject: done(reject), onText: options.onText });
      live.worker.postMessage({ type: 'job', id, job });
    });
  }

  /**
   * Batch occupancy and kept-cache counters of the current worker (for /metrics); undefined when
   * no worker is running. The counters start again with each fresh worker.
   */
  async servingStats(): Promise<ServingStats | undefined> {
    const live = this.live;
    if (!live || live.dead) return undefined;
    const id = this.nextId++;
    return new Promise((resolve) => {
      live.statsWaiting.set(id, resolve);
      live.worker.postMessage({ type: 'stats', id });
    });
  }

  async countTokens(text: string): Promise<number> {
    return this.tokenizer.encode(text, { addSpecialTokens: false }).length;
  }

  async chat(prompt: readonly PromptItem[], settings: GenerationSettings, options: RunOptions = {}): Promise<ChatResult> {
    const items = prompt.map((p) => (p.type === 'text' ? { type: 'text' as const, text: p.text } : { type: 'image' as const, data: new Uint8Array(p.image.data), hash: p.image.hash }));
    const temperature = settings.temperature;
    const r = await this.submit(
      {
        kind: 'chat',
        items,
        stream: options.onText !== undefined,
        settings: {
          numWords: settings.maxWords,
          retScaleFactor: settings.retScaleFactor,
          // The reference demo resolves up to two [RET]s per answer.
          maxNumRets: settings.maxNumRets ?? 2,
          maxImgPerRet: settings.maxImages,
          temperature,
          topP: temperature > 0 ? (settings.topP ?? 1) : 1,
          seed: settings.seed ?? randomInt(2 ** 31),
        },
      },
      options,
    );
    if (r.kind !== 'chat') throw new Error('model worker answered a chat job with the wrong result');
    const segments: Segment[] = r.segments.map((s) => (s.type === 'text' ? s : { type: 'images', images: s.images.map(replyImage) }));
    return { segments, generatedTokens: r.generatedTokens, historyText: r.historyText };
  }

  async retrieve(query: string, count: number, options: RunOptions = {}): Promise<readonly ReplyImage[]> {
    const r = await this.submit({ kind: 'retrieve', query, count }, options);
    return r.kind === 'retrieve' ? r.images.map(replyImage) : [];
  }

  /** get_log_lik_scores for an interleaved prompt (higher = more likely). */
  async logLikelihood(prompt: readonly PromptItem[], options: RunOptions = {}): Promise<number> {
    const items = prompt.map((p) => (p.type === 'text' ? { type: 'text' as const, text: p.text } : { type: 'image' as const, data: new Uint8Array(p.image.data), hash: p.image.hash }));
    const r = await this.submit({ kind: 'logLikelihood', items }, options);
    return r.kind === 'logLikelihood' ? r.value : Number.NaN;
  }

  /**
   * Abandons the worker (a watchdog on a stuck job): its jobs fail now and the next job starts
   * a fresh worker. The old thread is asked to exit once its current graph call returns, since
   * terminating a thread inside an onnxruntime call aborts the whole process.
   */
  restartWorker(reason = 'restarted'): void {
    const live = this.live;
    if (!live || live.dead) return;
    this.retire(live, reason);
  }

  private retire(live: LiveWorker, reason: string): void {
    live.dead = true;
    for (const answer of live.statsWaiting.values()) answer(undefined);
    live.statsWaiting.clear();
    for (const job of live.pending.values()) job.reject(new EngineWorkerError(`the model worker stopped (${reason}) before the job finished; it will be restarted for the next job`));
    live.pending.clear();
    live.worker.postMessage({ type: 'shutdown' });
    // Do not keep the process alive for a thread we no longer use.
    live.worker.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    const live = this.live;
    this.live = undefined;
    if (!live || live.dead) return;
    const exited = new Promise<void>((r) => live.worker.once('exit', () => r()));
    this.retire(live, 'the engine was closed');
    // A worker stuck inside one graph call is left to finish on its own (it is unref'd).
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise<void>((r) => (timer = setTimeout(r, 10_000).unref()))]);
    clearTimeout(timer);
  }
}

/** What src/service/open-engine.ts passes. */
export interface OpenEngineOptions {
  readonly bundleDir: string;
  readonly indexDirs: readonly string[];
  readonly device: 'cpu' | 'cuda';
  /** 0 = onnxruntime's default. */
  readonly threads: number;
  /** Retrieved images are cached under `<dataDir>/image-cache`. */
  readonly dataDir: string;
  readonly fetchAllow: readonly string[];
  /** FROMAGE_BATCH. */
  readonly batch?: number;
  /** FROMAGE_KV_CACHE_MB, FROMAGE_KV_DISK_MB, FROMAGE_KV_CODEC; spilled caches go to `<dataDir>/kv`. */
  readonly kvCacheMb?: number;
  readonly kvDiskMb?: number;
  readonly kvCodec?: WorkerInit['kvCodec'];
  readonly logger?: { warn: (msg: string) => void; info: (msg: string) => void };
}

export function openEngine(o: OpenEngineOptions): Promise<FromageEngine> {
  return FromageEngine.start({
    bundleDir: o.bundleDir,
    indexDirs: o.indexDirs,
    device: o.device,
    threads: o.threads || undefined,
    fetch: true,
    fetchAllow: o.fetchAllow,
    imageCacheDir: join(o.dataDir, 'image-cache'),
    batch: o.batch,
    kvCacheMb: o.kvCacheMb,
    kvDiskMb: o.kvDiskMb,
    kvCodec: o.kvCodec,
    kvDir: join(o.dataDir, 'kv'),
    onLog: (level, message) => (o.logger ? o.logger[level](message) : console.warn(message)),
  });
}
