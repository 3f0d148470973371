/**
 * What `npm start` does when no bundle exists: run setup when told to (`--yes`,
 * FROMAGE_SETUP_YES=1), ask on a terminal, and otherwise leave it to the caller to explain
 * (the caller's message is the one the user reads; nothing is logged here on a decline).
 */
import { existsSync } from 'node:fs';
import { resolve, join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.ts';
import { MANIFEST_FILE } from '../model/manifest.ts';
import { setupOptionsFromConfig } from './from-config.ts';
import { askYesNo } from './prompt.ts';
import type { SetupOptions } from './run-setup.ts';

export interface EnsureBundleOptions {
  /** A person is at a terminal and can answer a question. */
  interactive: boolean;
  /** Run setup without asking. */
  yes: boolean;
}

export interface EnsureBundleDeps {
  ask?: (question: string) => Promise<boolean>;
  runSetup?: (options: SetupOptions) => Promise<{ outcome: string }>;
  /** Where setup prints its plan (default: stdout). */
  print?: (line: string) => void;
}

type BundleConfig = Pick<Config, 'FROMAGE_BUNDLE' | 'FROMAGE_DEVICE' | 'FROMAGE_INDEX' | 'FROMAGE_SETUP_YES' | 'HF_ENDPOINT' | 'HF_TOKEN'>;

export async function ensureBundle(config: BundleConfig, logger: Logger, options: EnsureBundleOptions, deps: EnsureBundleDeps = {}): Promise<'ready' | 'declined'> {
  const bundle = resolve(config.FROMAGE_BUNDLE);
  if (existsSync(join(bundle, MANIFEST_FILE))) return 'ready';
  const run = deps.runSetup ?? (async (o: SetupOptions) => (await import('./run-setup.ts')).runSetup(o));
  const setupOptions = setupOptionsFromConfig(config, deps.print ? { print: deps.print } : {});
  if (config.FROMAGE_DEVICE === 'cuda') {
    // Setup builds fp16 for CUDA; say before the download if CUDA will not be there to run it.
    const { checkCudaProvider, cudaFallbackWarning } = await import('./device.ts');
    const status = await checkCudaProvider();
    if (!status.usable) logger.warn(cudaFallbackWarning(status));
  }

  if (options.yes || config.FROMAGE_SETUP_YES) {
    logger.info({ bundle, endpoint: config.HF_ENDPOINT }, 'no model bundle: running setup (--yes / FROMAGE_SETUP_YES)');
    await run(setupOptions);
    return 'ready';
  }
  if (options.interactive) {
    const ask = deps.ask ?? ((q: string) => askYesNo(q, false));
    // Setup plans first (what is already on disk, what the hub serves) and asks with that
    // plan's real size; a rough figure up front would be wrong for partial or mirrored setups.
    const r = await run({ ...setupOptions, confirm: (summary) => ask(`No model bundle at ${bundle}. ${summary}`) });
    return r.outcome === 'cancelled' ? 'declined' : 'ready';
  }
  return 'declined';
}
