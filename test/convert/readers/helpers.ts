/** Shared test helpers: fixture paths, the reference tensors, and a pickle byte builder. */
import { readFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const FIXTURES = join(import.meta.dirname, '..', '..', 'fixtures');
export const fixture = (...parts: string[]): string => join(FIXTURES, ...parts);

export function tempDir(prefix = 'readers-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

interface RefTensor {
  dtype: string;
  shape: number[];
  data: number[];
}

let reference: Record<string, RefTensor> | undefined;

/** One reference tensor (reference.json is 1.5 MB: parsed once per test file). */
export function referenceTensor(name: string): { shape: number[]; data: Float32Array } {
  reference ??= (JSON.parse(readFileSync(fixture('reference', 'reference.json'), 'utf8')) as { tensors: Record<string, RefTensor> }).tensors;
  const t = reference[name];
  if (!t) throw new Error(`no reference tensor ${name}`);
  return { shape: t.shape, data: Float32Array.from(t.data) };
}

/** Hand-assembled pickle bytes, for hostile and edge-case inputs. */
export class PickleBytes {
  private readonly out: number[] = [];
  private readonly enc = new TextEncoder();

  op(...bytes: number[]): this {
    this.out.push(...bytes);
    return this;
  }

  text(s: string): this {
    return this.op(...this.enc.encode(s));
  }

  u32(n: number): this {
    return this.op(n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff);
  }

  u64(n: number): this {
    return this.u32(n % 0x100000000).u32(Math.floor(n / 0x100000000));
  }

  proto(p: number): this {
    return this.op(0x80, p);
  }

  global(module: string, name: string): this {
    return this.op(0x63).text(`${module}\n${name}\n`);
  }

  /** SHORT_BINUNICODE or BINUNICODE. */
  str(s: string): this {
    const b = this.enc.encode(s);
    return b.length < 256 ? this.op(0x8c, b.length, ...b) : this.op(0x58).u32(b.length).op(...b);
  }

  binbytes8(b: Uint8Array): this {
    this.op(0x8e).u64(b.length);
    for (const x of b) this.out.push(x);
    return this;
  }

  int(n: number): this {
    return this.op(0x4a).u32(n >>> 0);
  }

  bytes(): Uint8Array {
    return Uint8Array.from(this.out);
  }
}
