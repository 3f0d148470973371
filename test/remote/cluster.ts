/**
 * Real processes for the remote tests: the fixture bundle converted and its index imported (images
 * served on loopback, each request observable and delayable), `fromage worker` processes and
 * a scripted gateway process, each with its log lines collected.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, normalize } from 'node:path';
import { convertBundle } from '../../src/convert/convert.ts';
import { importPickle } from '../../src/retrieval/import-pickle.ts';

const FIXTURES = 'test/fixtures';

export interface Fixtures {
  readonly bundle: string;
  /** Another bundle (vis4): a worker on it must refuse the gateway's jobs. */
  readonly otherBundle?: string;
  readonly index: string;
  readonly images: ImageServer;
}

export interface ImageServer {
  readonly port: number;
  /** Awaited before each response: tests hold a fetch to catch a worker mid-answer. */
  onRequest: (path: string) => Promise<void> | void;
  readonly requests: string[];
  close(): Promise<void>;
}

export async function serveImages(): Promise<ImageServer> {
  const root = join(FIXTURES, 'img');
  const state: { onRequest: ImageServer['onRequest'] } = { onRequest: () => {} };
  const requests: string[] = [];
  const server: Server = createServer((req, res) => {
    const path = normalize(decodeURIComponent((req.url ?? '/').split('?')[0]));
    requests.push(path);
    void Promise.resolve(state.onRequest(path))
      .then(() => readFile(join(root, path.slice('/img/'.length))))
      .then((body) => res.writeHead(200, { 'content-type': 'image/png' }).end(body))
      .catch(() => res.writeHead(404).end('not found'));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    get onRequest() {
      return state.onRequest;
    },
    set onRequest(f) {
      state.onRequest = f;
    },
    requests,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

export async function prepareFixtures(work: string, o: { otherBundle?: boolean } = {}): Promise<Fixtures> {
  const convert = (fromageDir: string, outDir: string) =>
    convertBundle({ optDir: join(FIXTURES, 'facebook/opt-6.7b'), clipDir: join(FIXTURES, 'openai/clip-vit-large-patch14'), fromageDir, outDir, weights: 'fp32', progress: { silent: true } });
  const bundle = join(work, 'bundle');
  await convert(join(FIXTURES, 'fromage_model'), bundle);
  let otherBundle: string | undefined;
  if (o.otherBundle) {
    otherBundle = join(work, 'bundle-vis4');
    await convert(join(FIXTURES, 'fromage_model/fromage_vis4'), otherBundle);
  }
  const images = await serveImages();
  const index = join(work, 'index');
  await importPickle(join(FIXTURES, 'fromage_model/cc3m_embeddings.pkl'), index, { silent: true });
  const urls = await readFile(join(index, 'urls.txt'), 'utf8');
  await writeFile(join(index, 'urls.txt'), urls.replaceAll('PORT', String(images.port)));
  return { bundle, otherBundle, index, images };
}

export interface Proc {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Everything it wrote, stdout and stderr. */
  output(): string;
  /** Log lines (pino JSON) it wrote to stderr. */
  logs(): Record<string, unknown>[];
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<void>;
  readonly exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): void;
}

export function startProc(args: string[], env: Record<string, string>, onStdoutLine?: (line: string) => void): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', LOG_LEVEL: 'info', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let stderr = '';
  let partial = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    if (!onStdoutLine) return;
    partial += d.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const l of lines) if (l) onStdoutLine(l);
  });
  child.stderr!.on('data', (d: Buffer) => {
    out += d.toString();
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    child,
    pid: child.pid!,
    output: () => out,
    logs: () =>
      stderr
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .flatMap((l) => {
          try {
            return [JSON.parse(l) as Record<string, unknown>];
          } catch {
            return [];
          }
        }),
    async waitFor(pattern, timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      while (!pattern.test(out)) {
        if (child.exitCode !== null) throw new Error(`process exited (${child.exitCode}) before ${pattern}:\n${out.slice(-3000)}`);
        if (Date.now() > deadline) throw new Error(`no ${pattern} after ${timeoutMs} ms:\n${out.slice(-3000)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    exited,
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}

/** A `fromage worker` process on the fixture bundle; resolves once it waits for jobs. */
export async function startWorkerProc(f: Fixtures, work: string, redisUrl: string, o: { bundle?: string; batch?: number; name: string; env?: Record<string, string> }): Promise<Proc> {
  const dataDir = join(work, `data-${o.name}`);
  await mkdir(dataDir, { recursive: true });
  const p = startProc(['src/cli.ts', 'worker', '--threads', '1', '--batch', String(o.batch ?? 2)], {
    FROMAGE_REDIS_URL: redisUrl,
    FROMAGE_BUNDLE: o.bundle ?? f.bundle,
    FROMAGE_INDEX: f.index,
    FROMAGE_DATA_DIR: dataDir,
    FROMAGE_FETCH_ALLOW: '127.0.0.1',
    FROMAGE_WORKER_TIMEOUT_S: '2',
    ...o.env,
  });
  await p.waitFor(/worker ready: waiting for jobs/, 90_000);
  return p;
}

/** The worker id (`host-pid-xxxxxx`) a process announced. */
export function workerIdOf(p: Proc): string {
  const line = p.logs().find((l) => l.msg === 'worker ready: waiting for jobs');
  if (!line || typeof line.worker !== 'string') throw new Error('the worker did not log its id');
  return line.worker;
}
