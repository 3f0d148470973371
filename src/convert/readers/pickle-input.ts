/**
 * Byte sources for the pickle interpreter: an in-memory buffer (a torch zip's data.pkl) or
 * a file read through a sliding window with synchronous positioned reads (a multi-GB index
 * pickle), where large byte payloads can be skipped and handed back as file ranges.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { CheckpointError } from './errors.ts';

export interface PickleInput {
  /** Name used in error messages. */
  readonly label: string;
  /** The file path when bytes can be referenced lazily; undefined for in-memory input. */
  readonly lazyFile: string | undefined;
  position(): number;
  readByte(): number;
  read(n: number): Uint8Array;
  /** n bytes decoded as UTF-8 (invalid sequences become U+FFFD). */
  readUtf8(n: number): string;
  /** Skips n bytes and returns the offset where they start (file input only). */
  skip(n: number): number;
  /** Bytes up to (not including) the next '\n', consumed with it. */
  readLine(): Uint8Array;
  close(): void;
}

function truncated(label: string, at: number, need: number): CheckpointError {
  return new CheckpointError(label, `pickle data is truncated: needed ${need} more byte(s) at offset ${at}`);
}

export class BufferPickleInput implements PickleInput {
  private pos = 0;
  readonly lazyFile = undefined;

  constructor(
    private readonly bytes: Uint8Array,
    readonly label: string,
  ) {}

  position(): number {
    return this.pos;
  }

  readByte(): number {
    if (this.pos >= this.bytes.length) throw truncated(this.label, this.pos, 1);
    return this.bytes[this.pos++];
  }

  read(n: number): Uint8Array {
    if (this.pos + n > this.bytes.length) throw truncated(this.label, this.pos, n);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  readUtf8(n: number): string {
    const b = this.read(n);
    return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('utf8');
  }

  skip(n: number): number {
    const start = this.pos;
    this.read(n);
    return start;
  }

  readLine(): Uint8Array {
    const end = this.bytes.indexOf(0x0a, this.pos);
    if (end < 0) throw truncated(this.label, this.pos, 1);
    const out = this.bytes.subarray(this.pos, end);
    this.pos = end + 1;
    return out;
  }

  close(): void {}
}

const WINDOW = 4 << 20;

export class FilePickleInput implements PickleInput {
  private readonly fd: number;
  private readonly size: number;
  private window = Buffer.alloc(0);
  /** File offset of window[0]. */
  private windowStart = 0;
  private pos = 0;

  constructor(readonly label: string) {
    try {
      this.fd = openSync(label, 'r');
    } catch (err) {
      throw new CheckpointError(label, `cannot open: ${(err as Error).message}`);
    }
    this.size = fstatSync(this.fd).size;
  }

  get lazyFile(): string {
    return this.label;
  }

  position(): number {
    return this.pos;
  }

  /** Makes [pos, pos + n) available in the window, or throws when the file is too short. */
  private ensure(n: number): void {
    const offsetInWindow = this.pos - this.windowStart;
    if (offsetInWindow >= 0 && offsetInWindow + n <= this.window.length) return;
    if (this.pos + n > this.size) throw truncated(this.label, this.pos, n);
    const length = Math.min(Math.max(n, WINDOW), this.size - this.pos);
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const got = readSync(this.fd, buf, done, length - done, this.pos + done);
      if (got === 0) throw truncated(this.label, this.pos + done, length - done);
      done += got;
    }
    this.window = buf;
    this.windowStart = this.pos;
  }

  readByte(): number {
    this.ensure(1);
    return this.window[this.pos++ - this.windowStart];
  }

  read(n: number): Uint8Array {
    this.ensure(n);
    const start = this.pos - this.windowStart;
    this.pos += n;
    if (start === 0 && n === this.window.length) {
      // A payload that got a window of its own: hand it over instead of copying it.
      const whole = this.window;
      this.window = Buffer.alloc(0);
      this.windowStart = this.pos;
      return whole;
    }
    // A copy, so a small value does not pin the whole 4 MB window.
    return Uint8Array.prototype.slice.call(this.window, start, start + n);
  }

  readUtf8(n: number): string {
    this.ensure(n);
    const start = this.pos - this.windowStart;
    this.pos += n;
    return this.window.toString('utf8', start, start + n);
  }

  skip(n: number): number {
    if (this.pos + n > this.size) throw truncated(this.label, this.pos, n);
    const start = this.pos;
    this.pos += n;
    return start;
  }

  readLine(): Uint8Array {
    const parts: Uint8Array[] = [];
    for (;;) {
      this.ensure(1);
      const startInWindow = this.pos - this.windowStart;
      const nl = this.window.indexOf(0x0a, startInWindow);
      if (nl >= 0) {
        parts.push(this.window.subarray(startInWindow, nl));
        this.pos += nl - startInWindow + 1;
        return Buffer.concat(parts);
      }
      parts.push(Buffer.from(this.window.subarray(startInWindow)));
      this.pos += this.window.length - startInWindow;
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}
