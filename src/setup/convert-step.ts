/**
 * The conversion step of setup: which weight format to build, how much disk it will take, and
 * the call into the converter (injectable, so setup can be tested without it).
 */
export type WeightsDtype = 'fp32' | 'fp16' | 'int8' | 'int4';
export const WEIGHTS_DTYPES: readonly WeightsDtype[] = ['fp32', 'fp16', 'int8', 'int4'];

export type Device = 'cpu' | 'cuda';

/** int4 keeps OPT-6.7B at ~4 GB of RAM and fast on CPU; on CUDA fp16 is exact and fast. */
export function defaultWeights(device: Device): WeightsDtype {
  return device === 'cuda' ? 'fp16' : 'int4';
}

export interface ConvertRequest {
  opt: string;
  clip: string;
  /** Folder with model_args.json and pretrained_ckpt.pth.tar (of the chosen variant). */
  fromage: string;
  out: string;
  weights: WeightsDtype;
}

export type ConvertFn = (request: ConvertRequest) => Promise<void>;

/** Bytes per parameter of the written graphs, with headroom for fp32 norms/biases and scales. */
const BYTES_PER_PARAM: Record<WeightsDtype, number> = { fp32: 4.1, fp16: 2.1, int8: 1.2, int4: 0.75 };

/**
 * Estimated bundle size from the source sizes: OPT shards are fp16 (2 bytes a parameter),
 * CLIP's safetensors fp32 (4 bytes, text tower included, so this over-estimates a little).
 */
export function estimateBundleBytes(optSourceBytes: number, clipSourceBytes: number, weights: WeightsDtype): number {
  const params = optSourceBytes / 2 + clipSourceBytes / 4;
  return Math.ceil(params * BYTES_PER_PARAM[weights]);
}

/** The project's converter (`fromage convert`), loaded only when a conversion runs. */
export const convertWithBundleConverter: ConvertFn = async (request) => {
  const { convertBundle } = await import('../convert/convert.ts');
  await convertBundle({ optDir: request.opt, clipDir: request.clip, fromageDir: request.fromage, outDir: request.out, weights: request.weights });
};
