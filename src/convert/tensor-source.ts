/**
 * The contract between checkpoint readers (src/convert/readers) and the graph builder:
 * tensors by name, read lazily one at a time so a 13 GB checkpoint never sits in memory.
 */

export type SourceDType = 'float32' | 'float16' | 'bfloat16' | 'int64' | 'int32' | 'uint8' | 'int8' | 'bool';

export interface TensorInfo {
  readonly name: string;
  readonly dtype: SourceDType;
  readonly shape: readonly number[];
  /** File the tensor lives in (for error messages and provenance). */
  readonly file: string;
}

export interface TensorSource {
  /** Every tensor name, in file order. */
  keys(): string[];
  has(name: string): boolean;
  /** Throws an error naming the file when the tensor is absent. */
  info(name: string): TensorInfo;
  /** The tensor upcast to float32 (fp16/bf16 values exactly as stored). */
  readFloat32(name: string): Promise<Float32Array>;
  /** The stored bytes, little-endian, in the stored dtype. */
  readRaw(name: string): Promise<{ dtype: SourceDType; shape: readonly number[]; bytes: Uint8Array }>;
  /** Source files read, for the manifest's provenance. */
  files(): string[];
  close(): Promise<void>;
}
