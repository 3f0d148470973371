/**
 * Positioned reads from one open file. Checkpoint readers never load a whole file: each
 * tensor is one (or a few) fs reads at its offset, so peak memory is the largest tensor.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { CheckpointError } from './errors.ts';

/** fs reads are limited to 2 GiB per call; stay well below. */
const MAX_READ_CHUNK = 1 << 30;

export class RandomAccessFile {
  private constructor(
    readonly path: string,
    readonly size: number,
    private readonly handle: FileHandle,
  ) {}

  static async open(path: string): Promise<RandomAccessFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      throw new CheckpointError(path, `cannot open: ${(err as Error).message}`);
    }
    const stat = await handle.stat();
    if (!stat.isFile()) {
      await handle.close();
      throw new CheckpointError(path, 'not a regular file');
    }
    return new RandomAccessFile(path, stat.size, handle);
  }

  /** Exactly `length` bytes at `position`; a range past the end means the file is truncated. */
  async read(position: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(out, position);
    return out;
  }

  async readInto(target: Uint8Array, position: number): Promise<void> {
    if (position < 0 || position + target.byteLength > this.size) {
      throw new CheckpointError(
        this.path,
        `file is truncated or corrupt: needs bytes ${position}..${position + target.byteLength} but has ${this.size}`,
      );
    }
    let done = 0;
    while (done < target.byteLength) {
      const want = Math.min(MAX_READ_CHUNK, target.byteLength - done);
      const { bytesRead } = await this.handle.read(target, done, want, position + done);
      if (bytesRead === 0) {
        throw new CheckpointError(this.path, `unexpected end of file at byte ${position + done} (file shrank while reading?)`);
      }
      done += bytesRead;
    }
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
