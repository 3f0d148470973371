/**
 * The model worker thread: owns one FromageRuntime, so inference never blocks the bot's event
 * loop. Jobs run as they arrive: chat answers share the runtime's batch (up to `batch` decode
 * together, more wait for a row) and every decoder call takes its turn at the batcher's gate.
 * Started through worker-entry.mjs.
 */
import { dirname } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { ImageInputError } from '../conversation/types.ts';
import { openIndexBackend } from './index-backend.ts';
import { FromageRuntime, type RuntimeItem } from './runtime.ts';
import { segments, wireImages } from './reply-segments.ts';
import type { FromWorker, JobItem, JobRequest, JobResult, ToWorker, WireError, WorkerInit } from './worker-protocol.ts';
import type { KvStore } from '../serving/kv-types.ts';
import { kvBundleInfo, kvStoreSetup } from '../serving/kv-config.ts';
import { createKvStore, DEFAULT_KV_CODEC } from '../serving/prefix-store.ts';

const port = parentPort;
if (!port) throw new Error('worker.ts must run in a worker thread');

function send(msg: FromWorker): void {
  port!.postMessage(msg);
}

export function toWireError(err: unknown): WireError {
  const e = err instanceof Error ? err : new Error(String(err));
  return { name: e.name, message: e.message, ...(e instanceof ImageInputError ? { reason: e.reason } : {}) };
}

function items(list: readonly JobItem[]): RuntimeItem[] {
  return list.map((i) => (i.type === 'text' ? i : { type: 'image', data: Buffer.from(i.data.buffer, i.data.byteOffset, i.data.byteLength), hash: i.hash, load: i.load }));
}

/** The kept-cache store the configuration asks for (its start line goes to the log); undefined when reuse is off. */
function openStore(init: WorkerInit, runtime: FromageRuntime): KvStore | undefined {
  const m = runtime.bundle.manifest;
  const dir = init.kvDir ?? '';
  const { options, description } = kvStoreSetup(
    { FROMAGE_KV_CACHE_MB: init.kvCacheMb, FROMAGE_KV_DISK_MB: init.kvDir ? (init.kvDiskMb ?? 0) : 0, FROMAGE_KV_CODEC: init.kvCodec ?? DEFAULT_KV_CODEC, FROMAGE_DATA_DIR: dirname(dir) },
    // The memory default leaves out the model's own weights.
    kvBundleInfo(m, init.bundleDir),
  );
  // kv-config names the spill directory `<data dir>/kv`; the worker is given it whole.
  const spill = options.spill && init.kvDir ? { ...options.spill, dir: init.kvDir } : undefined;
  send({ type: 'log', level: 'info', message: description });
  if (options.budgetBytes === 0) return undefined;
  return createKvStore({ ...options, spill, warn: (message) => send({ type: 'log', level: 'warn', message }) });
}

async function main(): Promise<void> {
  const init = workerData as WorkerInit;
  let runtime: FromageRuntime;
  try {
    runtime = await FromageRuntime.open(init.bundleDir, {
      device: init.device,
      threads: init.threads,
      preparedDecoder: init.preparedDecoder,
      visualCacheSize: init.visualCacheSize,
      maxImagePixels: init.maxImagePixels,
      warn: (message) => send({ type: 'log', level: 'warn', message }),
    });
    if (runtime.bundle.preparedDecoder) send({ type: 'log', level: 'info', message: `decoder: packed weights mapped from the copy prepared for this CPU (${runtime.bundle.preparedDecoder})` });
    if (init.indexDirs.length > 0) {
      runtime.setRetrieval(
        await openIndexBackend({
          indexDirs: init.indexDirs,
          logitScale: runtime.bundle.manifest.model.logit_scale,
          fetch: init.fetch,
          fetcher: { allow: init.fetchAllow, cacheDir: init.imageCacheDir },
          warn: (message) => send({ type: 'log', level: 'warn', message }),
        }),
      );
    }
    runtime.enableServing({ batch: init.batch ?? 1, store: openStore(init, runtime), warn: (message) => send({ type: 'log', level: 'warn', message }) });
  } catch (err) {
    send({ type: 'init-error', error: toWireError(err) });
    return;
  }
  const m = runtime.bundle.manifest;
  send({ type: 'ready', info: { bundleId: m.id, contextLength: m.model.max_positions, nVisualTokens: m.model.n_visual_tokens, hasIndex: runtime.hasIndex, device: runtime.bundle.device } });

  const running = new Map<number, AbortController>();
  const run = async (id: number, job: JobRequest, signal: AbortSignal): Promise<JobResult> => {
    switch (job.kind) {
      case 'logLikelihood':
        return { kind: 'logLikelihood', value: await runtime.logLikelihood(items(job.items)) };
      case 'retrieve': {
        const r = await runtime.retrieve(job.query, job.count, { signal });
        return { kind: 'retrieve', images: wireImages(r, 0) };
      }
      case 'chat': {
        const tok = runtime.bundle.tokenizer;
        const r = await runtime.generate(items(job.items), job.settings, {
          signal,
          onToken: job.stream ? (ids) => send({ type: 'text', id, text: tok.decode(ids, { skipSpecialTokens: true }) }) : undefined,
        });
        // demo/app.py keeps FROMAGe's text outputs (' [RET]' suffixes included), space-joined.
        const historyText = r.outputs.flatMap((o) => (o.kind === 'text' ? [o.text] : [])).join(' ');
        return { kind: 'chat', segments: segments(r, runtime.hasIndex), generatedTokens: r.generatedIdsFull.length, historyText };
      }
    }
  };
  // Jobs run concurrently (the batcher bounds what decodes at once); a cancel aborts the job
  // between steps.
  const inFlight = new Set<Promise<void>>();
  let closing = false;
  port!.on('message', (msg: ToWorker) => {
    if (msg.type === 'cancel') {
      running.get(msg.id)?.abort();
      return;
    }
    if (msg.type === 'stats') {
      const stats = runtime.servingStats();
      if (stats) send({ type: 'stats', id: msg.id, stats });
      return;
    }
    if (msg.type === 'shutdown') {
      closing = true;
      for (const ctl of running.values()) ctl.abort();
      // Exit only after every job has unwound: no onnxruntime call is in flight then.
      void Promise.allSettled([...inFlight]).then(async () => {
        await runtime.close().catch(() => undefined);
        process.exit(0);
      });
      return;
    }
    const ctl = new AbortController();
    if (closing) ctl.abort();
    running.set(msg.id, ctl);
    const job = (async () => {
      try {
        send({ type: 'result', id: msg.id, result: await run(msg.id, msg.job, ctl.signal) });
      } catch (err) {
        send({ type: 'error', id: msg.id, error: toWireError(err) });
      } finally {
        running.delete(msg.id);
      }
    })();
    inFlight.add(job);
    void job.finally(() => inFlight.delete(job));
  });
}

await main();
