/**
 * The TensorSource shared by every on-disk format: a list of tensors, each a byte range of
 * one open file (or, for a non-contiguous torch view, a strided region of one), read on
 * demand with positioned reads. Sharded checkpoints are one source over several files.
 */
import type { SourceDType, TensorInfo, TensorSource } from '../tensor-source.ts';
import { DTYPE_BYTES, toFloat32 } from './dtype.ts';
import { CheckpointError } from './errors.ts';
import type { RandomAccessFile } from './random-access.ts';

export interface TensorEntry extends TensorInfo {
  /** Absolute file offset of element 0. */
  readonly offset: number;
  /** Element strides when the stored view is not row-major contiguous. */
  readonly strides?: readonly number[];
}

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

/** True when strides describe row-major contiguous storage (size-1 dims may have any stride). */
export function isContiguous(shape: readonly number[], strides: readonly number[]): boolean {
  const want = contiguousStrides(shape);
  return shape.every((d, i) => d <= 1 || strides[i] === want[i]);
}

export class FileTensorSource implements TensorSource {
  private readonly byName = new Map<string, TensorEntry>();
  private closed = false;

  /**
   * @param label what errors name when a tensor is missing (the file, directory or index json)
   * @param files open handles by path; closed by close()
   */
  constructor(
    private readonly label: string,
    entries: readonly TensorEntry[],
    private readonly handles: ReadonlyMap<string, RandomAccessFile>,
  ) {
    for (const e of entries) {
      if (this.byName.has(e.name)) {
        throw new CheckpointError(e.file, `tensor '${e.name}' also appears in ${this.byName.get(e.name)?.file}`);
      }
      this.byName.set(e.name, e);
    }
  }

  keys(): string[] {
    return [...this.byName.keys()];
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  info(name: string): TensorInfo {
    const e = this.entry(name);
    return { name: e.name, dtype: e.dtype, shape: e.shape, file: e.file };
  }

  private entry(name: string): TensorEntry {
    const e = this.byName.get(name);
    if (!e) throw new CheckpointError(this.label, `checkpoint has no tensor named '${name}'`);
    return e;
  }

  async readRaw(name: string): Promise<{ dtype: SourceDType; shape: readonly number[]; bytes: Uint8Array }> {
    const e = this.entry(name);
    const handle = this.handles.get(e.file);
    if (!handle || this.closed) throw new CheckpointError(e.file, `cannot read '${name}': the checkpoint was closed`);
    const size = DTYPE_BYTES[e.dtype];
    const n = elementCount(e.shape);
    if (!e.strides || isContiguous(e.shape, e.strides)) {
      return { dtype: e.dtype, shape: e.shape, bytes: await handle.read(e.offset, n * size) };
    }
    return { dtype: e.dtype, shape: e.shape, bytes: await gatherStrided(handle, e, size, n) };
  }

  async readFloat32(name: string): Promise<Float32Array> {
    const raw = await this.readRaw(name);
    return toFloat32(raw.dtype, raw.bytes);
  }

  /** The tensor data files (shards), not the index json. */
  files(): string[] {
    return [...this.handles.keys()];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.handles.values()].map((h) => h.close()));
  }
}

/** Reads the region a strided view spans and copies its elements out in row-major order. */
async function gatherStrided(handle: RandomAccessFile, e: TensorEntry, size: number, n: number): Promise<Uint8Array> {
  const strides = e.strides ?? [];
  const extent = n === 0 ? 0 : e.shape.reduce((acc, d, i) => acc + (d - 1) * strides[i], 0) + 1;
  const region = await handle.read(e.offset, extent * size);
  const out = new Uint8Array(n * size);
  const index = new Array<number>(e.shape.length).fill(0);
  for (let k = 0; k < n; k++) {
    let src = 0;
    for (let d = 0; d < index.length; d++) src += index[d] * strides[d];
    out.set(region.subarray(src * size, src * size + size), k * size);
    for (let d = index.length - 1; d >= 0; d--) {
      if (++index[d] < e.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}
