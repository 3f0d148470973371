import type { Command } from 'commander';

export function registerWorkerCommands(program: Command): void {
  program
    .command('worker')
    .description('hold the model and answer jobs that a `fromage serve` gateway queues in Redis (needs FROMAGE_REDIS_URL)')
    .option('--device <device>', 'cpu or cuda (default: FROMAGE_DEVICE)')
    .option('--threads <n>', 'onnxruntime threads, 0 = its default (default: FROMAGE_THREADS)')
    .option('--batch <n>', 'jobs answered at once, decoded together (default: FROMAGE_BATCH)')
    .option('--compute-nice <n>', 'nice value (0-19) for the model compute and helper threads, so the event loop taking jobs from Redis is not queued behind them on a busy CPU (Linux; 0 = leave priorities alone)', '10')
    .option('--yes', 'run `fromage setup` without asking when no model bundle exists')
    .action(async (opts: { device?: string; threads?: string; batch?: string; yes?: boolean; computeNice?: string }) => {
      const { runWorker } = await import('./run-worker.ts');
      await runWorker(opts);
    });
}
