/**
 * Opening a model bundle: manifest, tokenizer and the three graph sessions, checked against
 * each other so a mismatch is a clear error here rather than an onnxruntime shape error later.
 */
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type * as ort from 'onnxruntime-node';
import { BundleError } from './errors.ts';
import { BUNDLE_FORMAT, FORMAT_VERSION, MANIFEST_FILE, manifestSchema, type Manifest } from './manifest.ts';
import { openPreparedDecoder } from './prepared-decoder.ts';
import { createSession, type Device, type SessionOptions } from './session.ts';
import { Tokenizer } from './tokenizer/tokenizer.ts';

export const TOKENIZER_FILE = 'tokenizer.json';

export interface Bundle {
  readonly dir: string;
  readonly manifest: Manifest;
  readonly tokenizer: Tokenizer;
  readonly vision: ort.InferenceSession;
  readonly embed: ort.InferenceSession;
  readonly decoder: ort.InferenceSession;
  /** Where the graphs run (cuda falls back to cpu). */
  readonly device: Device;
  /** The prepared decoder's folder when the decoder was mapped from it (src/model/prepared-decoder.ts). */
  readonly preparedDecoder?: string;
  release(): Promise<void>;
}

const FIX = 'run `fromage setup` (downloads and converts the model) or `fromage convert` to build it';

export async function readManifest(dir: string): Promise<Manifest> {
  const path = join(dir, MANIFEST_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new BundleError(`no model bundle at ${dir} (${MANIFEST_FILE} is missing): ${FIX}`);
    throw new BundleError(`cannot read ${path}: ${e.message}; ${FIX}`);
  }
  const head = raw as { format?: unknown; format_version?: unknown };
  if (head?.format !== BUNDLE_FORMAT) throw new BundleError(`${path} is not a FROMAGe bundle manifest; ${FIX}`);
  if (head.format_version !== FORMAT_VERSION) {
    throw new BundleError(
      `${path} has bundle format version ${String(head.format_version)}, this version of fromage-bot reads ${FORMAT_VERSION} (the decoder's KV-cache contract changed): rebuild it with \`fromage convert\` (or rerun \`fromage setup\`)`,
    );
  }
  const parsed = manifestSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new BundleError(`${path} is invalid (${issue.path.join('.')}: ${issue.message}); ${FIX}`);
  }
  return parsed.data;
}

type Dim = number | string;

function checkInput(session: ort.InferenceSession, graph: string, name: string, expected: readonly (number | null)[]): void {
  const meta = (session as unknown as { inputMetadata?: readonly { name: string; shape?: readonly Dim[] }[] }).inputMetadata;
  if (!session.inputNames.includes(name)) throw new BundleError(`${graph} has no input ${name}: the graph does not match the bundle contract; rebuild with \`fromage convert\``);
  const shape = meta?.find((m) => m.name === name)?.shape;
  if (!shape) return;
  const bad = shape.length !== expected.length || expected.some((d, i) => d !== null && typeof shape[i] === 'number' && shape[i] !== d);
  if (bad) {
    throw new BundleError(
      `${graph} input ${name} has shape [${shape.join(', ')}] but fromage.json says [${expected.map((d) => d ?? '?').join(', ')}]: the graphs and the manifest disagree; rebuild with \`fromage convert\``,
    );
  }
}

function checkOutputs(session: ort.InferenceSession, graph: string, names: readonly string[]): void {
  for (const n of names) if (!session.outputNames.includes(n)) throw new BundleError(`${graph} has no output ${n}; rebuild the bundle with \`fromage convert\``);
}

/** Verifies the sessions' inputs and outputs against the manifest's dimensions. */
export function validateGraphs(m: Manifest, vision: ort.InferenceSession, embed: ort.InferenceSession, decoder: ort.InferenceSession): void {
  const d = m.model;
  const S = m.preprocess.crop_size;
  checkInput(vision, 'vision.onnx', 'pixel_values', [null, 3, S, S]);
  checkOutputs(vision, 'vision.onnx', ['visual_embs', 'ret_embs']);
  checkInput(embed, 'embed.onnx', 'input_ids', [null, null]);
  checkOutputs(embed, 'embed.onnx', ['inputs_embeds']);
  checkInput(decoder, 'decoder.onnx', 'inputs_embeds', [null, null, d.hidden_size]);
  for (const n of ['attention_mask', 'position_ids', 'num_logits_to_keep']) checkInput(decoder, 'decoder.onnx', n, n === 'num_logits_to_keep' ? [] : [null, null]);
  const layers = decoder.inputNames.filter((n) => /^past_key_values\.\d+\.key$/.test(n)).length;
  if (layers !== d.num_layers) throw new BundleError(`decoder.onnx has ${layers} cache layers but fromage.json says ${d.num_layers}; rebuild with \`fromage convert\``);
  for (let i = 0; i < layers; i++) {
    for (const kv of ['key', 'value']) checkInput(decoder, 'decoder.onnx', `past_key_values.${i}.${kv}`, [null, d.num_heads, null, d.head_dim]);
  }
  checkOutputs(decoder, 'decoder.onnx', ['logits', 'ret_embeddings', ...Array.from({ length: layers }, (_, i) => [`new_key_values.${i}.key`, `new_key_values.${i}.value`]).flat()]);
}

export async function openBundle(dir: string, options: SessionOptions = {}): Promise<Bundle> {
  const manifest = await readManifest(dir);
  const files = { vision: manifest.graphs.vision, embed: manifest.graphs.embed, decoder: manifest.graphs.decoder, tokenizer: TOKENIZER_FILE };
  for (const f of Object.values(files)) {
    try {
      await access(join(dir, f));
    } catch {
      throw new BundleError(`the bundle at ${dir} is incomplete: ${f} is missing; ${FIX}`);
    }
  }
  const tokenizer = await Tokenizer.fromFile(join(dir, TOKENIZER_FILE)).catch((err: Error) => {
    throw new BundleError(`${err.message}; ${FIX}`);
  });
  if (tokenizer.size !== manifest.model.vocab_size) {
    throw new BundleError(`tokenizer.json has ${tokenizer.size} tokens but fromage.json says vocab_size ${manifest.model.vocab_size}; rebuild with \`fromage convert\``);
  }
  // The first session settles the device: after a CUDA fallback the others go straight to CPU.
  let sessionOptions = options;
  const open = async (f: string): Promise<{ session: ort.InferenceSession; device: Device }> => {
    try {
      const created = await createSession(join(dir, f), sessionOptions);
      sessionOptions = { ...sessionOptions, device: created.device };
      return created;
    } catch (err) {
      throw new BundleError(`cannot load ${join(dir, f)}: ${(err as Error).message.split('\n')[0]}; ${FIX}`);
    }
  };
  const vision = await open(files.vision);
  const embed = await open(files.embed);
  const prepared = options.preparedDecoder === false ? { why: 'none' as const } : await openPreparedDecoder(dir, manifest, sessionOptions, options.warn ?? console.warn);
  const decoder = prepared.session ? { session: prepared.session, device: 'cpu' as const } : await open(files.decoder);
  const sessions = [vision.session, embed.session, decoder.session];
  try {
    validateGraphs(manifest, vision.session, embed.session, decoder.session);
  } catch (err) {
    await Promise.all(sessions.map((s) => s.release()));
    throw err;
  }
  return {
    dir,
    manifest,
    tokenizer,
    vision: vision.session,
    embed: embed.session,
    decoder: decoder.session,
    device: decoder.device,
    preparedDecoder: prepared.session ? prepared.dir : undefined,
    release: async () => {
      await Promise.all(sessions.map((s) => s.release()));
    },
  };
}
