/**
 * The model worker thread: owns one FromageRuntime and runs the engine's jobs one at a time,
 * so inference never blocks the bot's event loop. Started through worker-entry.mjs.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ImageInputError } from '../conversation/types.ts';
import { openIndexBackend } from './index-backend.ts';
import { FromageRuntime, type RuntimeItem } from './runtime.ts';
import { segments, wireImages } from './reply-segments.ts';
import type { FromWorker, JobItem, JobRequest, JobResult, ToWorker, WireError, WorkerInit } from './worker-protocol.ts';

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

async function main(): Promise<void> {
  const init = workerData as WorkerInit;
  let runtime: FromageRuntime;
  try {
    runtime = await FromageRuntime.open(init.bundleDir, {
      device: init.device,
      threads: init.threads,
      visualCacheSize: init.visualCacheSize,
      maxImagePixels: init.maxImagePixels,
      warn: (message) => send({ type: 'log', level: 'warn', message }),
    });
    if (init.indexDirs.length > 0) {
      runtime.setRetrieval(
        await openIndexBackend({
          indexDirs: init.indexDirs,
          logitScale: runtime.bundle.manifest.model.logit_scale,
          fetch: init.fetch,
          fetcher: { allow: init.fetchAllow, cacheDir: init.imageCacheDir },
        }),
      );
    }
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
  // Jobs run one after another; a cancel for a queued or running job aborts it between steps.
  let chain: Promise<void> = Promise.resolve();
  port!.on('message', (msg: ToWorker) => {
    if (msg.type === 'cancel') {
      running.get(msg.id)?.abort();
      return;
    }
    if (msg.type === 'shutdown') {
      for (const ctl of running.values()) ctl.abort();
      // Exit only after the current job has unwound: no onnxruntime call is in flight then.
      void chain.then(async () => {
        await runtime.close().catch(() => undefined);
        process.exit(0);
      });
      return;
    }
    const ctl = new AbortController();
    running.set(msg.id, ctl);
    chain = chain.then(async () => {
      try {
        send({ type: 'result', id: msg.id, result: await run(msg.id, msg.job, ctl.signal) });
      } catch (err) {
        send({ type: 'error', id: msg.id, error: toWireError(err) });
      } finally {
        running.delete(msg.id);
      }
    });
  });
}

await main();
