/**
 * safetensors: an 8-byte little-endian header length, a JSON header
 * {name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?}, then the data block.
 * The header is untrusted input: every entry is validated against the file before use.
 */
import { z } from 'zod';
import type { SourceDType } from '../tensor-source.ts';
import { DTYPE_BYTES } from './dtype.ts';
import { CheckpointError } from './errors.ts';
import { elementCount, type TensorEntry } from './file-tensor-source.ts';
import type { RandomAccessFile } from './random-access.ts';

const SAFETENSORS_DTYPES: Readonly<Record<string, SourceDType>> = {
  F32: 'float32',
  F16: 'float16',
  BF16: 'bfloat16',
  I64: 'int64',
  I32: 'int32',
  U8: 'uint8',
  I8: 'int8',
  BOOL: 'bool',
};

/** Headers above this are corrupt (the format itself caps them at 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

const entrySchema = z.object({
  dtype: z.string(),
  shape: z.array(z.number().int().nonnegative()),
  data_offsets: z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()]),
});

/** True when the first bytes look like a safetensors header (length, then '{'). */
export function looksLikeSafetensors(head: Uint8Array, fileSize: number): boolean {
  if (head.length < 9) return false;
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const n = view.getUint32(0, true) + view.getUint32(4, true) * 0x100000000;
  return n > 1 && n + 8 <= fileSize && head[8] === 0x7b;
}

export async function readSafetensorsEntries(file: RandomAccessFile): Promise<TensorEntry[]> {
  const bad = (why: string): never => {
    throw new CheckpointError(file.path, `invalid safetensors file: ${why}`);
  };
  if (file.size < 8) bad('shorter than its 8-byte header length');
  const lenBytes = await file.read(0, 8);
  const lv = new DataView(lenBytes.buffer, lenBytes.byteOffset, 8);
  const headerLength = lv.getUint32(0, true) + lv.getUint32(4, true) * 0x100000000;
  if (headerLength > MAX_HEADER_BYTES) bad(`header length ${headerLength} is implausible`);
  if (8 + headerLength > file.size) bad(`header (${headerLength} bytes) runs past the end of the ${file.size}-byte file (truncated?)`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(await file.read(8, headerLength)));
  } catch (err) {
    bad(`header is not JSON (${(err as Error).message})`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) bad('header is not a JSON object');
  const dataStart = 8 + headerLength;
  const dataSize = file.size - dataStart;
  const entries: TensorEntry[] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') continue;
    const parsed = entrySchema.safeParse(raw);
    if (!parsed.success) bad(`tensor '${name}' has a malformed entry (${parsed.error.issues[0]?.message ?? 'invalid'})`);
    const { dtype: code, shape, data_offsets: [begin, end] } = parsed.data as z.infer<typeof entrySchema>;
    const dtype = SAFETENSORS_DTYPES[code];
    if (!dtype) bad(`tensor '${name}' has unsupported dtype '${code}' (supported: ${Object.keys(SAFETENSORS_DTYPES).join(', ')})`);
    if (end < begin) bad(`tensor '${name}' has data_offsets [${begin}, ${end}] that run backwards`);
    if (end > dataSize) bad(`tensor '${name}' data [${begin}, ${end}) points past the end of the file (data block is ${dataSize} bytes; truncated?)`);
    const want = elementCount(shape) * DTYPE_BYTES[dtype];
    if (end - begin !== want) bad(`tensor '${name}' has ${end - begin} data bytes but shape [${shape.join(', ')}] of ${code} needs ${want}`);
    entries.push({ name, dtype, shape, file: file.path, offset: dataStart + begin });
  }
  // safetensors headers are JSON objects (unordered on purpose); file order is data order.
  entries.sort((a, b) => a.offset - b.offset);
  return entries;
}
