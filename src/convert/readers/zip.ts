/**
 * Just enough of the ZIP format to read torch.save checkpoints: the central directory
 * (ZIP64 included, since real shards are ~10 GB) and the offset of each member's data.
 * torch stores members uncompressed, so a member is a plain byte range of the file.
 */
import { CheckpointError } from './errors.ts';
import type { RandomAccessFile } from './random-access.ts';

export interface ZipMember {
  readonly name: string;
  /** 0 = stored; anything else is compressed and unusable as a byte range. */
  readonly method: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly localHeaderOffset: number;
}

const EOCD_SIG = 0x06054b50;
const ZIP64_LOCATOR_SIG = 0x07064b50;
const ZIP64_EOCD_SIG = 0x06064b50;
const CENTRAL_SIG = 0x02014b50;
const LOCAL_SIG = 0x04034b50;
const U32_MAX = 0xffffffff;
const MAX_DIRECTORY_BYTES = 256 << 20;

function u64(view: DataView, at: number): number {
  const lo = view.getUint32(at, true);
  const hi = view.getUint32(at + 4, true);
  return hi * 0x100000000 + lo;
}

export function isZipMagic(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04;
}

/** Reads the central directory. Errors name the file: truncated archives lose their tail first. */
export async function readZipDirectory(file: RandomAccessFile): Promise<ZipMember[]> {
  const bad = (why: string): never => {
    throw new CheckpointError(file.path, `not a readable zip archive: ${why}`);
  };
  // The end record is in the last 22 + 65535 (comment) bytes.
  const tailLength = Math.min(file.size, 22 + 0xffff + 20);
  const tail = await file.read(file.size - tailLength, tailLength);
  const tv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  let eocd = -1;
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tv.getUint32(i, true) === EOCD_SIG) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) bad('end of central directory not found (file truncated or not a zip)');
  let count = tv.getUint16(eocd + 10, true);
  let cdSize = tv.getUint32(eocd + 12, true);
  let cdOffset = tv.getUint32(eocd + 16, true);
  if (count === 0xffff || cdSize === U32_MAX || cdOffset === U32_MAX) {
    const loc = eocd - 20;
    if (loc < 0 || tv.getUint32(loc, true) !== ZIP64_LOCATOR_SIG) bad('ZIP64 locator missing');
    const z64Offset = u64(tv, loc + 8);
    const z64 = await file.read(z64Offset, 56);
    const zv = new DataView(z64.buffer, z64.byteOffset, 56);
    if (zv.getUint32(0, true) !== ZIP64_EOCD_SIG) bad('ZIP64 end record missing');
    count = u64(zv, 32);
    cdSize = u64(zv, 40);
    cdOffset = u64(zv, 48);
  }
  if (cdOffset + cdSize > file.size) bad('central directory lies past the end of the file (truncated)');
  // A torch checkpoint's directory is ~100 bytes per tensor; refuse to buffer absurd claims.
  if (cdSize > MAX_DIRECTORY_BYTES) bad(`central directory of ${cdSize} bytes is implausibly large`);
  const cd = await file.read(cdOffset, cdSize);
  const cv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
  const members: ZipMember[] = [];
  const decoder = new TextDecoder();
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || cv.getUint32(p, true) !== CENTRAL_SIG) bad(`central directory entry ${i} is corrupt`);
    const method = cv.getUint16(p + 10, true);
    let compressedSize = cv.getUint32(p + 20, true);
    let size = cv.getUint32(p + 24, true);
    const nameLength = cv.getUint16(p + 28, true);
    const extraLength = cv.getUint16(p + 30, true);
    const commentLength = cv.getUint16(p + 32, true);
    let localHeaderOffset = cv.getUint32(p + 42, true);
    const name = decoder.decode(cd.subarray(p + 46, p + 46 + nameLength));
    // ZIP64 extended info: 8-byte values for exactly those fields saturated at 0xffffffff.
    let e = p + 46 + nameLength;
    const extraEnd = e + extraLength;
    while (e + 4 <= extraEnd) {
      const id = cv.getUint16(e, true);
      const len = cv.getUint16(e + 2, true);
      if (id === 0x0001) {
        let q = e + 4;
        if (size === U32_MAX) {
          size = u64(cv, q);
          q += 8;
        }
        if (compressedSize === U32_MAX) {
          compressedSize = u64(cv, q);
          q += 8;
        }
        if (localHeaderOffset === U32_MAX) localHeaderOffset = u64(cv, q);
      }
      e += 4 + len;
    }
    members.push({ name, method, compressedSize, size, localHeaderOffset });
    p = extraEnd + commentLength;
  }
  return members;
}

/** File offset of a member's first data byte (after its local header, which has its own extra field). */
export async function memberDataOffset(file: RandomAccessFile, m: ZipMember): Promise<number> {
  const head = await file.read(m.localHeaderOffset, 30);
  const hv = new DataView(head.buffer, head.byteOffset, 30);
  if (hv.getUint32(0, true) !== LOCAL_SIG) {
    throw new CheckpointError(file.path, `zip member '${m.name}' has a corrupt local header`);
  }
  const offset = m.localHeaderOffset + 30 + hv.getUint16(26, true) + hv.getUint16(28, true);
  if (offset + m.compressedSize > file.size) {
    throw new CheckpointError(file.path, `zip member '${m.name}' extends past the end of the file (truncated download?)`);
  }
  return offset;
}
