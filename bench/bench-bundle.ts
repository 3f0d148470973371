/**
 * The model the serve benches run: `--bundle DIR`, or a synthetic bundle of `--weights` (int4 or
 * fp32) built under `--work`. Spread BUNDLE_OPTIONS into the bench's parseArgs options.
 */
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { syntheticBundle } from './synthetic-bundle.ts';

export const BUNDLE_OPTIONS = {
  bundle: { type: 'string' },
  weights: { type: 'string', default: 'int4' },
  work: { type: 'string', default: join(tmpdir(), 'fromage-serve-bench') },
} as const;

export interface BundleArgs {
  bundle?: string;
  weights: string;
  work: string;
}

/** Checks --weights and creates --work; returns the work folder (absolute). */
export async function benchWork(values: BundleArgs): Promise<string> {
  if (values.weights !== 'int4' && values.weights !== 'fp32') throw new Error('--weights must be int4 or fp32');
  const work = resolve(values.work);
  await mkdir(work, { recursive: true });
  return work;
}

/** The bundle folder: --bundle, or a synthetic bundle built under `work`. */
export async function benchBundle(values: BundleArgs, work: string): Promise<string> {
  return values.bundle ? resolve(values.bundle) : await syntheticBundle(work, { weights: values.weights as 'int4' | 'fp32' });
}
