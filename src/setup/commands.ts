/**
 * `fromage setup`: download the upstream checkpoints from the Hugging Face hub (HF_ENDPOINT,
 * HF_TOKEN), verify them, and convert them to the bundle FROMAGE_BUNDLE names.
 * The work lives in run-setup.ts, imported when the command runs.
 */
import type { Command } from 'commander';
import { z } from 'zod';
import { WEIGHTS_DTYPES } from './convert-step.ts';
import { SetupError } from './errors.ts';

const cliSchema = z.object({
  yes: z.boolean().default(false),
  dryRun: z.boolean().default(false),
  device: z.enum(['cpu', 'cuda']).optional(),
  weights: z.enum(WEIGHTS_DTYPES as ['fp32', 'fp16', 'int8', 'int4']).optional(),
  dir: z.string().min(1).optional(),
  out: z.string().min(1).optional(),
  visualTokens: z.enum(['1', '4']).default('1'),
  jobs: z.coerce.number().int().min(1).max(16).default(4),
});

export function registerSetupCommands(program: Command): void {
  program
    .command('setup')
    .description('download FROMAGe (OPT-6.7B, CLIP ViT-L/14, the FROMAGe layers) from the Hugging Face hub, verify and convert it')
    .option('-y, --yes', 'do not ask before downloading (also FROMAGE_SETUP_YES=1)')
    .option('--device <device>', 'cpu or cuda: picks the default weights (default: FROMAGE_DEVICE)')
    .option('--weights <dtype>', `bundle weights, one of ${WEIGHTS_DTYPES.join(', ')} (default: int4 on cpu, fp16 on cuda)`)
    .option('--dir <dir>', 'folder for the upstream files, under <dir>/upstream (default: the folder of FROMAGE_BUNDLE)')
    .option('--out <dir>', 'bundle folder to write (default: FROMAGE_BUNDLE)')
    .option('--visual-tokens <n>', 'FROMAGe variant: 1 (the paper) or 4 visual tokens', '1')
    .option('-j, --jobs <n>', 'parallel downloads', '4')
    .option('--dry-run', 'show what would be downloaded and converted, write nothing')
    .action(async (raw: Record<string, unknown>) => {
      const parsed = cliSchema.safeParse(raw);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        throw new SetupError(`--${String(issue.path[0]).replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}: ${issue.message}`);
      }
      const opts = parsed.data;
      const { loadConfig } = await import('../config.ts');
      const config = loadConfig(process.env);
      const { setupOptionsFromConfig } = await import('./from-config.ts');
      const { runSetup } = await import('./run-setup.ts');
      const { askYesNo } = await import('./prompt.ts');
      const device = opts.device ?? config.FROMAGE_DEVICE;
      if (device === 'cuda') {
        // Said before a 15 GB download, not after: the user may prefer an int4 CPU bundle.
        const { checkCudaProvider, cudaFallbackWarning } = await import('./device.ts');
        const status = await checkCudaProvider();
        if (!status.usable) process.stderr.write(`warning: ${cudaFallbackWarning(status)}\n`);
      }
      const ask = !opts.yes && !config.FROMAGE_SETUP_YES && process.stdin.isTTY;
      process.once('SIGINT', () => {
        process.stderr.write('\nInterrupted. Partial downloads are kept: run `fromage setup` again to resume.\n');
        process.exit(130);
      });
      await runSetup(
        setupOptionsFromConfig(config, {
          device,
          weights: opts.weights,
          ...(opts.dir ? { dir: opts.dir } : {}),
          ...(opts.out ? { out: opts.out } : {}),
          visualTokens: opts.visualTokens === '4' ? 4 : 1,
          jobs: opts.jobs,
          dryRun: opts.dryRun,
          confirm: ask ? (summary) => askYesNo(summary, true) : undefined,
        }),
      );
    });
}
