/** Test helper: the oracle's tensors (reference/reference.json) and case files. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const FIXTURES = join(import.meta.dirname, '../fixtures');

interface RawTensor {
  dtype: 'float32' | 'int64' | 'uint8';
  shape: number[];
  data: number[];
}

let tensors: Record<string, RawTensor> | undefined;

export function refTensor(name: string): { shape: number[]; data: Float32Array } {
  tensors ??= (JSON.parse(readFileSync(join(FIXTURES, 'reference/reference.json'), 'utf8')) as { tensors: Record<string, RawTensor> }).tensors;
  const t = tensors[name];
  if (!t) throw new Error(`reference tensor ${name} not found`);
  return { shape: t.shape, data: Float32Array.from(t.data) };
}

export function refJson<T>(file: string): T {
  return JSON.parse(readFileSync(join(FIXTURES, 'reference', file), 'utf8')) as T;
}

/** Row `r` of a row-major 2-D tensor. */
export function row(t: { shape: number[]; data: Float32Array }, r: number): Float32Array {
  const w = t.shape[t.shape.length - 1];
  return t.data.subarray(r * w, (r + 1) * w);
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
