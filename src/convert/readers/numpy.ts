/**
 * Helpers over the pickle reader's NumpyArray descriptions, for consumers such as the
 * retrieval index import: dtype facts, and float32 materialisation (whole or streamed by rows)
 * whether the payload is inline or a lazy file range.
 */
import { float16ToFloat32 } from './dtype.ts';
import { CheckpointError } from './errors.ts';
import { iterateLazyBytes, isLazyBytes, type NumpyArray } from './pickle.ts';

const FLOAT_ITEM_BYTES: Readonly<Record<string, number>> = { '<f4': 4, '<f2': 2, '<f8': 8 };

/** Bytes per element of a little-endian float dtype, or an error naming `file`. */
export function floatItemBytes(arr: NumpyArray, file: string): number {
  const size = FLOAT_ITEM_BYTES[arr.dtype];
  if (size === undefined) throw new CheckpointError(file, `numpy array has dtype '${arr.dtype}'; expected little-endian float16/32/64`);
  return size;
}

function dataLength(arr: NumpyArray): number {
  return isLazyBytes(arr.data) ? arr.data.length : arr.data.byteLength;
}

function toF32(dtype: string, bytes: Uint8Array): Float32Array {
  if (dtype === '<f2') return float16ToFloat32(bytes);
  const item = dtype === '<f8' ? 8 : 4;
  // Chunks read from disk are fresh, aligned buffers: view them instead of copying.
  const aligned = bytes.byteOffset % item === 0 ? bytes : bytes.slice();
  if (dtype === '<f8') return Float32Array.from(new Float64Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 8));
  return new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4);
}

/**
 * Streams a C-order float array as float32 blocks of whole rows (row = product of all dims
 * but the first). Peak memory is one block, so a 2.7 GB matrix never sits in memory.
 */
export async function* iterateFloat32Rows(
  arr: NumpyArray,
  file: string,
  rowsPerChunk = 65536,
): AsyncGenerator<{ firstRow: number; rows: number; data: Float32Array }> {
  const item = floatItemBytes(arr, file);
  if (arr.fortranOrder && arr.shape.length > 1) throw new CheckpointError(file, 'numpy array is in Fortran order; expected C order');
  const rowElems = arr.shape.slice(1).reduce((a, b) => a * b, 1);
  const totalElems = arr.shape.reduce((a, b) => a * b, 1);
  if (dataLength(arr) !== totalElems * item) {
    throw new CheckpointError(file, `numpy array data is ${dataLength(arr)} bytes but shape [${arr.shape.join(', ')}] of ${arr.dtype} needs ${totalElems * item}`);
  }
  const rowBytes = Math.max(1, rowElems * item);
  let firstRow = 0;
  if (isLazyBytes(arr.data)) {
    for await (const chunk of iterateLazyBytes(arr.data, rowsPerChunk * rowBytes, rowBytes)) {
      const rows = chunk.byteLength / rowBytes;
      yield { firstRow, rows, data: toF32(arr.dtype, chunk) };
      firstRow += rows;
    }
    return;
  }
  const bytes = arr.data;
  for (let off = 0; off < bytes.byteLength; off += rowsPerChunk * rowBytes) {
    const chunk = bytes.subarray(off, Math.min(bytes.byteLength, off + rowsPerChunk * rowBytes));
    const rows = chunk.byteLength / rowBytes;
    yield { firstRow, rows, data: toF32(arr.dtype, chunk) };
    firstRow += rows;
  }
}

/** The whole array as float32 (small arrays; use iterateFloat32Rows for big ones). */
export async function numpyToFloat32(arr: NumpyArray, file: string): Promise<Float32Array> {
  const total = arr.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(total);
  const rowElems = arr.shape.length > 1 ? arr.shape.slice(1).reduce((a, b) => a * b, 1) : 1;
  for await (const block of iterateFloat32Rows(arr, file)) out.set(block.data, block.firstRow * rowElems);
  return out;
}
