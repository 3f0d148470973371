/**
 * The prepared decoder: onnxruntime's optimized decoder graph saved with its prepacked weights
 * (`session.save_external_prepacked_constant_initializers`), so that a start maps the packed
 * weights from a file instead of building private copies of them.
 *
 * Why: on CPU, onnxruntime repacks every MatMulNBits weight into its own layout when a session
 * is created. For the OPT-6.7B-shaped int4 bundle that is 4.7 GiB of private memory, most of
 * the load time going to zeroing and filling it. Loaded from the prepared copy the same weights
 * are file-backed pages: shared between processes, reclaimable, and the load is about twice as
 * fast with the files in the page cache (docs/runtime.md, "Start-up"). onnxruntime still runs
 * each kernel's packing once to recognise the saved copy, so the CPU cost of packing stays, and
 * from a cold page cache it reads both the original and the packed weights: that, and the disk
 * (about 2.2x the decoder's weights), is why it is opt-in (`fromage prepare`, `convert --prepare`).
 *
 * The packed layout depends on the CPU's instruction set and on the onnxruntime build, so a
 * copy lives under `<bundle>/prepared/<key>/`, the key naming bundle, onnxruntime version and
 * CPU. It is trusted only after a probe: one decoder call whose outputs must be bit-identical
 * to the ones the normally loaded graph gives (onnxruntime 1.30 restores small prepacked
 * weights wrongly, e.g. every layer of the test fixtures' tiny decoder: such a copy is refused
 * and the bundle loads as before). The probe of a fresh copy runs in a child process, so that a
 * copy onnxruntime cannot load crashes that process rather than the caller.
 */
import { fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statfsSync, statSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { arch, cpus } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { z } from 'zod';
import { UserFacingError } from '../conversation/errors.ts';
import type { Manifest } from './manifest.ts';
import { createSession, type SessionOptions } from './session.ts';

export const PREPARED_DIR = 'prepared';
const INFO_FILE = 'prepared.json';
const GRAPH_FILE = 'decoder.onnx';
const DATA_FILE = 'decoder.onnx.data';
const INFO_VERSION = 1;
/** Probe positions: enough for attention across positions, cheap at every model size. */
const PROBE_POSITIONS = 2;
/** Free disk needed, as a multiple of the decoder's weight file (the copy keeps the original weights beside the packed ones: 2.2x measured for int4). */
const DISK_FACTOR = 2.5;

export class PrepareError extends UserFacingError {}

const infoSchema = z.object({
  version: z.literal(INFO_VERSION),
  key: z.string(),
  onnxruntime: z.string(),
  cpu: z.string(),
  created: z.string(),
  status: z.enum(['ok', 'refused']),
  reason: z.string().optional(),
  /** sha256 of the probe's outputs from the normally loaded graph. */
  probe: z.string().optional(),
  /** Sizes of the copy's files, checked at load (a truncated copy is not mapped). */
  files: z.record(z.string(), z.number()).optional(),
  seconds: z.number().optional(),
});
export type PreparedInfo = z.infer<typeof infoSchema>;

function onnxruntimeVersion(): string {
  return (createRequire(import.meta.url)('onnxruntime-node/package.json') as { version: string }).version;
}

/** What the packed layout depends on: the CPU model and its instruction-set flags (Linux), or the model name. */
export function cpuSignature(): string {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const field = (name: string) => info.match(new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm'))?.[1]?.trim() ?? '';
    const model = field('model name');
    if (model) return `${arch()} ${model} [${field('flags')}]`;
  } catch {
    // not Linux
  }
  return `${arch()} ${cpus()[0]?.model ?? 'unknown cpu'}`;
}

/** The folder of this bundle's prepared decoder for this onnxruntime and CPU. */
export function preparedDir(bundleDir: string, manifest: Manifest): { dir: string; key: string; cpu: string; onnxruntime: string } {
  const cpu = cpuSignature();
  const onnxruntime = onnxruntimeVersion();
  let decoderBytes = 0;
  for (const f of [manifest.graphs.decoder, `${manifest.graphs.decoder}.data`]) if (existsSync(join(bundleDir, f))) decoderBytes += statSync(join(bundleDir, f)).size;
  const key = createHash('sha256').update(JSON.stringify([manifest.id, decoderBytes, onnxruntime, cpu])).digest('hex').slice(0, 16);
  return { dir: join(bundleDir, PREPARED_DIR, key), key, cpu, onnxruntime };
}

/** Whether the decoder has weights onnxruntime prepacks into large private copies (quantized MatMulNBits). */
export function benefitsFromPreparing(manifest: Manifest): boolean {
  return manifest.weights.dtype === 'int4' || manifest.weights.dtype === 'int8';
}

export async function readPreparedInfo(dir: string): Promise<PreparedInfo | undefined> {
  try {
    const parsed = infoSchema.safeParse(JSON.parse(await readFile(join(dir, INFO_FILE), 'utf8')));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** One decoder call's inputs, the same every time: `PROBE_POSITIONS` fixed embeddings, no cache. */
export interface ProbeSpec {
  readonly hidden: number;
  readonly layers: number;
  readonly heads: number;
  readonly headDim: number;
}

export function probeSpec(manifest: Manifest): ProbeSpec {
  const m = manifest.model;
  return { hidden: m.hidden_size, layers: m.num_layers, heads: m.num_heads, headDim: m.head_dim };
}

function probeFeeds(spec: ProbeSpec): Record<string, ort.Tensor> {
  const T = PROBE_POSITIONS;
  const embeds = Float32Array.from({ length: T * spec.hidden }, (_, i) => Math.sin(i * 0.731) * 0.5);
  const feeds: Record<string, ort.Tensor> = {
    inputs_embeds: new ort.Tensor('float32', embeds, [1, T, spec.hidden]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(T).fill(1n), [1, T]),
    position_ids: new ort.Tensor('int64', BigInt64Array.from({ length: T }, (_, i) => BigInt(i)), [1, T]),
    num_logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(BigInt(T)), []),
  };
  for (let i = 0; i < spec.layers; i++) {
    for (const kv of ['key', 'value']) feeds[`past_key_values.${i}.${kv}`] = new ort.Tensor('float32', new Float32Array(0), [1, spec.heads, 0, spec.headDim]);
  }
  return feeds;
}

/** sha256 over every output of the probe call, by name: equal only when the outputs are bit-identical. */
export async function probeHash(session: ort.InferenceSession, spec: ProbeSpec): Promise<string> {
  const out = await session.run(probeFeeds(spec));
  const h = createHash('sha256');
  for (const name of [...session.outputNames].sort()) {
    const t = out[name];
    const data = t.data as Float32Array;
    h.update(name).update(JSON.stringify(t.dims)).update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  return h.digest('hex');
}

function saveEntries(): Record<string, string> {
  return {
    'session.save_external_prepacked_constant_initializers': '1',
    'session.optimized_model_external_initializers_file_name': DATA_FILE,
    'session.optimized_model_external_initializers_min_size_in_bytes': '1024',
  };
}

/** What the child process is asked (src/model/prepared-decoder-child.mjs). */
export type ChildRequest =
  | { readonly mode: 'save'; readonly graph: string; readonly outDir: string; readonly spec: ProbeSpec; readonly threads?: number }
  | { readonly mode: 'load'; readonly dir: string; readonly spec: ProbeSpec; readonly threads?: number };
export type ChildReply = { readonly ok: true; readonly hash: string } | { readonly ok: false; readonly error: string };

/** The child's work: save the optimized graph with its prepacked weights, or load a saved copy; either way answer the probe's hash. */
export async function runChildRequest(req: ChildRequest): Promise<ChildReply> {
  try {
    const { session } =
      req.mode === 'save'
        ? await createSession(req.graph, { threads: req.threads, optimizedModelFile: join(req.outDir, GRAPH_FILE), configEntries: saveEntries() })
        : await createSession(join(req.dir, GRAPH_FILE), { threads: req.threads, optimizationLevel: 'disabled' });
    const hash = await probeHash(session, req.spec);
    await session.release();
    return { ok: true, hash };
  } catch (err) {
    return { ok: false, error: (err as Error).message.split('\n')[0] };
  }
}

/** Runs `req` in a child process; a crash (onnxruntime cannot map a copy) is an answer too. */
function inChild(req: ChildRequest): Promise<ChildReply> {
  return new Promise((resolve) => {
    const child = fork(join(import.meta.dirname, 'prepared-decoder-child.mjs'), [], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    let reply: ChildReply | undefined;
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-2000);
    });
    child.on('message', (m) => {
      reply = m as ChildReply;
    });
    child.on('error', (err) => resolve({ ok: false, error: `could not start the preparing process: ${err.message}` }));
    child.on('exit', (code, signal) => {
      if (reply) resolve(reply);
      else {
        const why = signal ? `was killed by ${signal}` : `exited with code ${code}`;
        const last = stderr.trim().split('\n').filter((l) => !/^\s*$/.test(l)).pop();
        resolve({ ok: false, error: `the onnxruntime process ${why}${last ? ` (${last.slice(0, 300)})` : ''}` });
      }
    });
    child.send(req);
  });
}

export interface PrepareOptions {
  readonly threads?: number;
  /** Rebuild even when a copy (or a refusal) exists. */
  readonly force?: boolean;
  readonly log?: (line: string) => void;
}

export interface PrepareResult {
  readonly dir: string;
  readonly status: 'ok' | 'refused' | 'kept';
  readonly reason?: string;
  readonly bytes?: number;
  readonly seconds: number;
}

/**
 * Builds `<bundle>/prepared/<key>/` for this CPU: saves the optimized decoder with its prepacked
 * weights (in a child process), loads the saved copy in another child and compares the probe.
 * A copy that does not reproduce the probe bit for bit is deleted and remembered as refused, so
 * later starts load the bundle as before without trying again.
 */
export async function prepareDecoder(bundleDir: string, manifest: Manifest, o: PrepareOptions = {}): Promise<PrepareResult> {
  const started = performance.now();
  const seconds = () => (performance.now() - started) / 1000;
  const log = o.log ?? (() => {});
  const target = preparedDir(bundleDir, manifest);
  const existing = await readPreparedInfo(target.dir);
  if (existing && !o.force) return { dir: target.dir, status: 'kept', reason: existing.status === 'refused' ? existing.reason : undefined, seconds: seconds() };
  const graph = join(bundleDir, manifest.graphs.decoder);
  const weightFile = `${graph}.data`;
  const weightBytes = existsSync(weightFile) ? statSync(weightFile).size : statSync(graph).size;
  await mkdir(join(bundleDir, PREPARED_DIR), { recursive: true }).catch((err: NodeJS.ErrnoException) => {
    throw new PrepareError(`cannot write the prepared decoder under ${join(bundleDir, PREPARED_DIR)} (${err.code ?? err.message}): make the bundle folder writable, or skip this step (the bot loads the bundle as it is)`);
  });
  const need = Math.ceil(weightBytes * DISK_FACTOR);
  const free = (() => {
    try {
      const s = statfsSync(bundleDir);
      return s.bavail * s.bsize;
    } catch {
      return Number.POSITIVE_INFINITY;
    }
  })();
  if (free < need) {
    throw new PrepareError(
      `preparing the decoder needs about ${gib(need)} free next to the bundle, ${gib(free)} is free at ${bundleDir}: free some space and run \`fromage prepare\` again (the bot works without it, loading more slowly)`,
    );
  }
  const tmp = `${target.dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  const spec = probeSpec(manifest);
  const base = { version: INFO_VERSION, key: target.key, onnxruntime: target.onnxruntime, cpu: target.cpu } as const;
  const refuse = async (reason: string): Promise<PrepareResult> => {
    await rm(tmp, { recursive: true, force: true });
    await rm(target.dir, { recursive: true, force: true });
    await mkdir(target.dir, { recursive: true });
    const info: PreparedInfo = { ...base, created: new Date().toISOString(), status: 'refused', reason, seconds: seconds() };
    await writeFile(join(target.dir, INFO_FILE), `${JSON.stringify(info, null, 2)}\n`);
    return { dir: target.dir, status: 'refused', reason, seconds: seconds() };
  };
  try {
    log(`saving the decoder with onnxruntime's packed weights (${gib(weightBytes)} of weights; this takes about as long as loading the bundle plus writing ~${gib(weightBytes * 2.2)})`);
    const saved = await inChild({ mode: 'save', graph, outDir: tmp, spec, threads: o.threads });
    if (!saved.ok) return await refuse(`saving failed: ${saved.error}`);
    log('checking the saved copy against the bundle (one decoder call each)');
    const loaded = await inChild({ mode: 'load', dir: tmp, spec, threads: o.threads });
    if (!loaded.ok) return await refuse(`onnxruntime ${target.onnxruntime} cannot load the saved copy: ${loaded.error}`);
    if (loaded.hash !== saved.hash) return await refuse(`onnxruntime ${target.onnxruntime} restores the packed weights wrongly on this model (the probe's outputs differ)`);
    const files: Record<string, number> = {};
    for (const f of [GRAPH_FILE, DATA_FILE]) files[f] = statSync(join(tmp, f)).size;
    const info: PreparedInfo = { ...base, created: new Date().toISOString(), status: 'ok', probe: saved.hash, files, seconds: seconds() };
    await writeFile(join(tmp, INFO_FILE), `${JSON.stringify(info, null, 2)}\n`);
    await rm(target.dir, { recursive: true, force: true });
    await rename(tmp, target.dir);
    return { dir: target.dir, status: 'ok', bytes: files[GRAPH_FILE] + files[DATA_FILE], seconds: seconds() };
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

export type PreparedOpen =
  | { readonly session: ort.InferenceSession; readonly dir: string }
  | { readonly session?: undefined; readonly why: 'none' | 'refused' | 'device' | 'damaged' | 'mismatch'; readonly detail?: string };

/**
 * The decoder session from this CPU's prepared copy, checked by the probe; otherwise why not
 * (the caller then loads the bundle's decoder). `warn` hears about a copy that exists but cannot
 * be used, with what to run.
 */
export async function openPreparedDecoder(bundleDir: string, manifest: Manifest, options: SessionOptions, warn: (message: string) => void): Promise<PreparedOpen> {
  if (options.device === 'cuda') return { why: 'device' };
  const { dir } = preparedDir(bundleDir, manifest);
  const info = await readPreparedInfo(dir);
  if (!info) return { why: 'none' };
  if (info.status === 'refused') return { why: 'refused', detail: info.reason };
  const fix = `run \`fromage prepare --force\` to rebuild it, or delete ${dir}; loading the bundle's decoder instead`;
  for (const [f, size] of Object.entries(info.files ?? {})) {
    const path = join(dir, f);
    if (!existsSync(path) || statSync(path).size !== size) {
      warn(`the prepared decoder at ${dir} is damaged (${f} is missing or has the wrong size): ${fix}`);
      return { why: 'damaged', detail: f };
    }
  }
  let session: ort.InferenceSession | undefined;
  try {
    session = (await createSession(join(dir, GRAPH_FILE), { ...options, optimizationLevel: 'disabled' })).session;
    const hash = await probeHash(session, probeSpec(manifest));
    if (hash === info.probe) return { session, dir };
    warn(`the prepared decoder at ${dir} gives different outputs from the bundle's: ${fix}`);
  } catch (err) {
    warn(`the prepared decoder at ${dir} could not be loaded (${(err as Error).message.split('\n')[0]}): ${fix}`);
  }
  await session?.release();
  return { why: 'mismatch' };
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}
