/**
 * Writes a state dict in torch.save's zip format (what `torch.load` and our reader accept):
 * `<folder>/data.pkl` (pickle protocol 2 of an OrderedDict of `_rebuild_tensor_v2` calls),
 * one stored member `<folder>/data/<i>` per tensor, `<folder>/version` and `byteorder`.
 * Tensor bytes are streamed from a callback, so multi-GB synthetic checkpoints (the
 * conversion benchmark) and hand-made test checkpoints never sit in memory. Members are
 * 64-byte aligned like torch's, and ZIP64 records are written when offsets or sizes need them.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import type { SourceDType } from '../tensor-source.ts';
import { DTYPE_BYTES } from './dtype.ts';

export interface TorchTensorSpec {
  readonly name: string;
  readonly dtype: SourceDType;
  readonly shape: readonly number[];
  /** Element strides; default row-major contiguous. */
  readonly stride?: readonly number[];
  /** Elements in the backing storage; default the extent the shape and stride span. */
  readonly storageNumel?: number;
}

/** Produces a tensor's storage bytes (storageNumel * element size), in any chunking. */
export type StorageBytes = (spec: TorchTensorSpec, index: number) => AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

const STORAGE_CLASS: Readonly<Record<SourceDType, string>> = {
  float32: 'FloatStorage',
  float16: 'HalfStorage',
  bfloat16: 'BFloat16Storage',
  int64: 'LongStorage',
  int32: 'IntStorage',
  uint8: 'ByteStorage',
  int8: 'CharStorage',
  bool: 'BoolStorage',
};

function rowMajor(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

export function storageNumelOf(spec: TorchTensorSpec): number {
  if (spec.storageNumel !== undefined) return spec.storageNumel;
  const stride = spec.stride ?? rowMajor(spec.shape);
  if (spec.shape.some((d) => d === 0)) return 0;
  return spec.shape.reduce((acc, d, i) => acc + (d - 1) * stride[i], 0) + 1;
}

/** Minimal protocol-2 pickle emitter for the one structure torch.save produces. */
class PickleWriter {
  private readonly parts: number[] = [0x80, 2];
  private readonly enc = new TextEncoder();

  op(...bytes: number[]): this {
    this.parts.push(...bytes);
    return this;
  }

  global(module: string, name: string): this {
    this.op(0x63, ...this.enc.encode(`${module}\n${name}\n`));
    return this;
  }

  str(s: string): this {
    const b = this.enc.encode(s);
    this.op(0x58, b.length & 0xff, (b.length >> 8) & 0xff, (b.length >> 16) & 0xff, (b.length >>> 24) & 0xff, ...b);
    return this;
  }

  int(n: number): this {
    if (n >= 0 && n < 256) return this.op(0x4b, n);
    if (n >= 0 && n < 65536) return this.op(0x4d, n & 0xff, n >> 8);
    if (n >= -0x80000000 && n < 0x80000000) return this.op(0x4a, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff);
    // LONG1: little-endian two's complement, here always non-negative.
    const bytes: number[] = [];
    let v = BigInt(n);
    while (v > 0n) {
      bytes.push(Number(v & 0xffn));
      v >>= 8n;
    }
    if ((bytes[bytes.length - 1] & 0x80) !== 0) bytes.push(0);
    return this.op(0x8a, bytes.length, ...bytes);
  }

  intTuple(values: readonly number[]): this {
    this.op(0x28);
    for (const v of values) this.int(v);
    return this.op(0x74);
  }

  emptyOrderedDict(): this {
    return this.global('collections', 'OrderedDict').op(0x29, 0x52);
  }

  bytes(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

export function torchStateDictPickle(specs: readonly TorchTensorSpec[]): Uint8Array {
  const w = new PickleWriter();
  w.emptyOrderedDict().op(0x28);
  specs.forEach((spec, i) => {
    w.str(spec.name).global('torch._utils', '_rebuild_tensor_v2').op(0x28);
    w.op(0x28).str('storage').global('torch', STORAGE_CLASS[spec.dtype]).str(String(i)).str('cpu').int(storageNumelOf(spec)).op(0x74, 0x51);
    w.int(0).intTuple(spec.shape).intTuple(spec.stride ?? rowMajor(spec.shape)).op(0x89).emptyOrderedDict();
    w.op(0x74, 0x52);
  });
  return w.op(0x75, 0x2e).bytes();
}

const U32_MAX = 0xffffffff;
const ALIGN = 64;

interface WrittenMember {
  name: Uint8Array;
  offset: number;
  size: number;
  crc: number;
}

/** Streams zip members (stored, no compression) with positioned writes. */
class ZipStreamWriter {
  private position = 0;
  private readonly members: WrittenMember[] = [];
  private readonly enc = new TextEncoder();

  /** @param force64 write ZIP64 records even when not needed (exercises readers' ZIP64 path) */
  constructor(
    private readonly fh: FileHandle,
    private readonly force64: boolean,
  ) {}

  private async write(bytes: Uint8Array, at = this.position): Promise<void> {
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await this.fh.write(bytes, done, bytes.length - done, at + done);
      done += bytesWritten;
    }
    if (at === this.position) this.position += bytes.length;
  }

  private localHeader(name: Uint8Array, size: number, crc: number, offset: number): Uint8Array {
    const zip64 = this.force64 || size >= U32_MAX;
    const base = 30 + name.length + (zip64 ? 20 : 0);
    // Pad with an extra field (at least its 4-byte header) so member data is 64-byte aligned.
    let pad = (ALIGN - ((offset + base + 4) % ALIGN)) % ALIGN;
    pad += 4;
    const h = new Uint8Array(base + pad);
    const v = new DataView(h.buffer);
    v.setUint32(0, 0x04034b50, true);
    v.setUint16(4, zip64 ? 45 : 20, true);
    v.setUint32(14, crc, true);
    v.setUint32(18, zip64 ? U32_MAX : size, true);
    v.setUint32(22, zip64 ? U32_MAX : size, true);
    v.setUint16(26, name.length, true);
    v.setUint16(28, h.length - 30 - name.length, true);
    h.set(name, 30);
    let p = 30 + name.length;
    if (zip64) {
      v.setUint16(p, 0x0001, true);
      v.setUint16(p + 2, 16, true);
      v.setBigUint64(p + 4, BigInt(size), true);
      v.setBigUint64(p + 12, BigInt(size), true);
      p += 20;
    }
    v.setUint16(p, 0x4246, true); // 'FB', torch's padding record
    v.setUint16(p + 2, pad - 4, true);
    return h;
  }

  async addMember(name: string, size: number, chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<void> {
    const nameBytes = this.enc.encode(name);
    const offset = this.position;
    const placeholder = this.localHeader(nameBytes, size, 0, offset);
    await this.write(placeholder);
    let crc = 0;
    let written = 0;
    for await (const chunk of chunks) {
      crc = crc32(chunk, crc);
      written += chunk.length;
      await this.write(chunk);
    }
    if (written !== size) throw new Error(`zip member ${name}: wrote ${written} bytes, expected ${size}`);
    await this.write(this.localHeader(nameBytes, size, crc, offset), offset);
    this.members.push({ name: nameBytes, offset, size, crc });
  }

  async finish(): Promise<void> {
    const cdStart = this.position;
    for (const m of this.members) {
      const needs64 = this.force64 || m.size >= U32_MAX || m.offset >= U32_MAX;
      const h = new Uint8Array(46 + m.name.length + (needs64 ? 28 : 0));
      const v = new DataView(h.buffer);
      v.setUint32(0, 0x02014b50, true);
      v.setUint16(4, 45, true);
      v.setUint16(6, needs64 ? 45 : 20, true);
      v.setUint32(16, m.crc, true);
      v.setUint32(20, needs64 ? U32_MAX : m.size, true);
      v.setUint32(24, needs64 ? U32_MAX : m.size, true);
      v.setUint16(28, m.name.length, true);
      v.setUint16(30, needs64 ? 28 : 0, true);
      v.setUint32(42, needs64 ? U32_MAX : m.offset, true);
      h.set(m.name, 46);
      if (needs64) {
        const p = 46 + m.name.length;
        v.setUint16(p, 0x0001, true);
        v.setUint16(p + 2, 24, true);
        v.setBigUint64(p + 4, BigInt(m.size), true);
        v.setBigUint64(p + 12, BigInt(m.size), true);
        v.setBigUint64(p + 20, BigInt(m.offset), true);
      }
      await this.write(h);
    }
    const cdSize = this.position - cdStart;
    const needs64 = this.force64 || cdStart >= U32_MAX || this.members.length >= 0xffff;
    if (needs64) {
      const z = new Uint8Array(56 + 20);
      const v = new DataView(z.buffer);
      const z64At = this.position;
      v.setUint32(0, 0x06064b50, true);
      v.setBigUint64(4, 44n, true);
      v.setUint16(12, 45, true);
      v.setUint16(14, 45, true);
      v.setBigUint64(24, BigInt(this.members.length), true);
      v.setBigUint64(32, BigInt(this.members.length), true);
      v.setBigUint64(40, BigInt(cdSize), true);
      v.setBigUint64(48, BigInt(cdStart), true);
      v.setUint32(56, 0x07064b50, true);
      v.setBigUint64(64, BigInt(z64At), true);
      v.setUint32(72, 1, true);
      await this.write(z);
    }
    const e = new Uint8Array(22);
    const ev = new DataView(e.buffer);
    ev.setUint32(0, 0x06054b50, true);
    ev.setUint16(8, needs64 ? 0xffff : this.members.length, true);
    ev.setUint16(10, needs64 ? 0xffff : this.members.length, true);
    ev.setUint32(12, needs64 ? U32_MAX : cdSize, true);
    ev.setUint32(16, needs64 ? U32_MAX : cdStart, true);
    await this.write(e);
  }
}

export interface TorchZipWriteOptions {
  /** The archive's top folder; torch uses the file name without its last extension. */
  folder: string;
  /** Always write ZIP64 records (default: only where sizes or offsets need them). */
  forceZip64?: boolean;
}

/** Writes `specs` as a torch zip checkpoint at `path`, streaming each storage from `data`. */
export async function writeTorchZipCheckpoint(
  path: string,
  specs: readonly TorchTensorSpec[],
  data: StorageBytes,
  options: TorchZipWriteOptions,
): Promise<void> {
  const folder = options.folder;
  const fh = await open(path, 'w');
  try {
    const zip = new ZipStreamWriter(fh, options.forceZip64 ?? false);
    const pkl = torchStateDictPickle(specs);
    await zip.addMember(`${folder}/data.pkl`, pkl.length, [pkl]);
    await zip.addMember(`${folder}/byteorder`, 6, [new TextEncoder().encode('little')]);
    for (let i = 0; i < specs.length; i++) {
      const size = storageNumelOf(specs[i]) * DTYPE_BYTES[specs[i].dtype];
      await zip.addMember(`${folder}/data/${i}`, size, data(specs[i], i));
    }
    await zip.addMember(`${folder}/version`, 2, [new TextEncoder().encode('3\n')]);
    await zip.finish();
  } finally {
    await fh.close();
  }
}

/** A plain stored zip of in-memory members (tests build non-torch and hostile archives with it). */
export async function writeStoredZip(path: string, members: ReadonlyArray<{ name: string; bytes: Uint8Array }>): Promise<void> {
  const fh = await open(path, 'w');
  try {
    const zip = new ZipStreamWriter(fh, false);
    for (const m of members) await zip.addMember(m.name, m.bytes.length, [m.bytes]);
    await zip.finish();
  } finally {
    await fh.close();
  }
}
