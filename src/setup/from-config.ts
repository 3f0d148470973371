/** SetupOptions from the validated configuration: the one place env settings map to setup. */
import { dirname } from 'node:path';
import type { Config } from '../config.ts';
import { convertWithBundleConverter } from './convert-step.ts';
import type { SetupOptions } from './run-setup.ts';

type SetupConfig = Pick<Config, 'FROMAGE_BUNDLE' | 'FROMAGE_DEVICE' | 'FROMAGE_INDEX' | 'HF_ENDPOINT' | 'HF_TOKEN'>;

export function setupOptionsFromConfig(config: SetupConfig, overrides: Partial<SetupOptions> = {}): SetupOptions {
  return {
    // Upstream files live next to the bundle (checkpoints/upstream for the default bundle).
    dir: dirname(config.FROMAGE_BUNDLE),
    out: config.FROMAGE_BUNDLE,
    device: config.FROMAGE_DEVICE,
    endpoint: config.HF_ENDPOINT,
    token: config.HF_TOKEN,
    convert: convertWithBundleConverter,
    showIndexHelp: config.FROMAGE_INDEX.length === 0,
    ...overrides,
  };
}
