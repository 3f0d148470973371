/**
 * `fromage inspect BUNDLE`: the manifest summary and each graph's inputs and outputs as
 * onnxruntime sees them (so a bundle that does not load is caught here, not at serve time).
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { MANIFEST_FILE, manifestSchema, type Manifest } from '../model/manifest.ts';
import { ConvertError } from './graphs/weights.ts';

export interface GraphReport {
  name: keyof Manifest['graphs'];
  file: string;
  bytes: number;
  inputs: string[];
  outputs: string[];
}

export interface BundleReport {
  manifest: Manifest;
  graphs: GraphReport[];
}

function describeValue(m: ort.InferenceSession.ValueMetadata): string {
  if (!m.isTensor) return `${m.name}: (not a tensor)`;
  return `${m.name}: ${m.type} [${m.shape.join(', ')}]`;
}

async function fileBytes(path: string): Promise<number> {
  const onnx = await stat(path).catch(() => {
    throw new ConvertError(`${path}: graph file listed in ${MANIFEST_FILE} is missing`);
  });
  const data = await stat(`${path}.data`).catch(() => undefined);
  return onnx.size + (data?.size ?? 0);
}

export async function inspectBundle(dir: string): Promise<BundleReport> {
  const manifestPath = join(dir, MANIFEST_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(manifestPath, 'utf8'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConvertError(`${manifestPath}: ${code === 'ENOENT' ? 'not found; is this a bundle written by `fromage convert`?' : `unreadable (${(err as Error).message})`}`);
  }
  const parsed = manifestSchema.safeParse(raw);
  if (!parsed.success) {
    throw new ConvertError(`${manifestPath}: not a valid bundle manifest (${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')})`);
  }
  const manifest = parsed.data;
  const graphs: GraphReport[] = [];
  for (const name of ['vision', 'embed', 'decoder'] as const) {
    const file = join(dir, manifest.graphs[name]);
    const bytes = await fileBytes(file);
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(file, { intraOpNumThreads: 1, graphOptimizationLevel: 'disabled' });
    } catch (err) {
      throw new ConvertError(`${file}: onnxruntime cannot load this graph (${(err as Error).message})`);
    }
    graphs.push({ name, file: manifest.graphs[name], bytes, inputs: session.inputMetadata.map(describeValue), outputs: session.outputMetadata.map(describeValue) });
    await session.release();
  }
  return { manifest, graphs };
}

function mib(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / 1024).toFixed(1)} KiB`;
}

export function formatBundleReport(r: BundleReport): string {
  const m = r.manifest;
  const lines = [
    `bundle ${m.id} (format ${m.format_version}, created ${m.created})`,
    `weights: ${m.weights.dtype}${m.weights.block_size ? `, block size ${m.weights.block_size}` : ''}`,
    `model: hidden ${m.model.hidden_size}, ${m.model.num_layers} layers, ${m.model.num_heads} heads x ${m.model.head_dim}, ffn ${m.model.ffn_dim}, vocab ${m.model.vocab_size}, max positions ${m.model.max_positions}`,
    `fromage: ${m.model.n_visual_tokens} visual token(s), retrieval dim ${m.model.shared_emb_dim}, logit_scale ${m.model.logit_scale}; CLIP hidden ${m.model.clip_hidden_size}, image ${m.model.image_size}px`,
    `tokens: bos ${m.tokens.bos}, eos ${m.tokens.eos}, pad ${m.tokens.pad}, <|image|> ${m.tokens.image}, [RET] ${m.tokens.ret}, newline ${m.tokens.newline}`,
    `preprocess: resize ${m.preprocess.size} (${m.preprocess.resample}), crop ${m.preprocess.crop_size}, mean [${m.preprocess.image_mean.join(', ')}], std [${m.preprocess.image_std.join(', ')}]`,
    `sources:`,
    ...m.sources.map((s) => `  ${s.path}  ${mib(s.bytes)}  sha256 ${s.sha256}`),
  ];
  for (const g of r.graphs) {
    lines.push(`${g.name}: ${g.file} (${mib(g.bytes)} with external data)`);
    lines.push(...g.inputs.map((i) => `  in  ${i}`), ...g.outputs.map((o) => `  out ${o}`));
  }
  return lines.join('\n');
}
