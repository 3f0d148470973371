/**
 * Reading checkpoint tensors for the graph builders: shape checks against the config (errors
 * name the file), and the layout changes ONNX wants (Linear weights transposed for MatMul).
 */
import { float32ArrayToFloat16 } from '../quantize.ts';
import { DTYPE_BYTES } from '../readers/dtype.ts';
import type { TensorSource } from '../tensor-source.ts';
import { UserFacingError } from '../../conversation/errors.ts';

/** A conversion failure the user can fix (bad input files); the CLI prints the message only. */
export class ConvertError extends UserFacingError {}

export type WeightDType = 'fp32' | 'fp16' | 'int8' | 'int4';

export interface WeightFormat {
  dtype: WeightDType;
  /** MatMulNBits block size (int8/int4). */
  blockSize: number;
}

/** Tensor access for one checkpoint, with the file named in every error. */
export class CheckpointTensors {
  /** Called after each tensor read with its stored size (progress reporting). */
  onRead?: (name: string, storedBytes: number) => void;

  constructor(
    readonly source: TensorSource,
    /** What the user knows this checkpoint as (e.g. "OPT checkpoint in /x/opt-6.7b"). */
    readonly label: string,
  ) {}

  /** Stored size of a tensor in bytes. */
  storedBytes(name: string): number {
    const info = this.source.info(name);
    return info.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[info.dtype];
  }

  has(name: string): boolean {
    return this.source.has(name);
  }

  /** Throws a ConvertError unless `name` exists with exactly `shape`. */
  expectShape(name: string, shape: readonly number[], why: string): void {
    if (!this.source.has(name)) {
      const files = this.source.files();
      throw new ConvertError(`${this.label}: tensor ${name} is missing (files: ${files.join(', ')})`);
    }
    const info = this.source.info(name);
    const same = info.shape.length === shape.length && info.shape.every((d, i) => d === shape[i]);
    if (!same) {
      throw new ConvertError(`${info.file}: tensor ${name} has shape [${info.shape.join(', ')}], but ${why} implies [${shape.join(', ')}]`);
    }
  }

  async f32(name: string, shape: readonly number[], why: string): Promise<Float32Array> {
    this.expectShape(name, shape, why);
    const data = await this.source.readFloat32(name);
    this.onRead?.(name, this.storedBytes(name));
    return data;
  }
}

/** Row-major [rows, cols] -> [cols, rows]. */
export function transpose2d<T extends Float32Array | Uint16Array>(src: T, rows: number, cols: number): T {
  const out = new (src.constructor as new (n: number) => T)(rows * cols);
  // Blocked so both sides stay in cache for the big (4096 x 16384) matrices.
  const B = 64;
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(rows, r0 + B);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(cols, c0 + B);
      for (let r = r0; r < r1; r++) {
        const base = r * cols;
        for (let c = c0; c < c1; c++) out[c * rows + r] = src[base + c];
      }
    }
  }
  return out;
}

export function bytesOf(a: Float32Array | Uint16Array | Uint8Array | Int8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** float32 -> IEEE binary16 bits, round to nearest even. */
export function toHalf(src: Float32Array): Uint16Array {
  return float32ArrayToFloat16(src);
}
