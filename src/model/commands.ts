/**
 * `fromage generate` and `fromage retrieve`: run the model once from the terminal. The JSON
 * they print (`--json`) is a stable contract used by tests and scripts (see cli-output.ts).
 */
import type { Command } from 'commander';

function collect(value: string, previous: string[]): string[] {
  return [...previous, ...value.split(',').map((s) => s.trim()).filter(Boolean)];
}

export interface ModelCommandOptions {
  /** Absent: FROMAGE_BUNDLE (read when the command runs, after .env). */
  bundle?: string;
  /** Empty: FROMAGE_INDEX. */
  index: string[];
  fetch: boolean;
  json?: boolean;
}

export function registerModelCommands(program: Command): void {
  program
    .command('generate')
    .description('Run FROMAGe on a prompt of images and text (generate_for_images_and_texts)')
    .option('--bundle <dir>', 'model bundle directory (default: FROMAGE_BUNDLE)')
    .option('--index <dir>', 'retrieval index directory (repeatable, or comma-separated; default: FROMAGE_INDEX)', collect, [])
    .requiredOption('--input <case.json>', 'prompt and settings: {"prompt": [{"image": "a.png"} | {"text": "..."}], "num_words": 16, ...}')
    .option('--no-fetch', 'do not download retrieved images; every candidate counts as loadable')
    .option('--json', 'print the result as JSON')
    .action(async (opts: ModelCommandOptions & { input: string }) => {
      const { runGenerateCommand } = await import('./cli-actions.ts');
      await runGenerateCommand(opts);
    });

  program
    .command('retrieve')
    .description('Find index images for a text query through its [RET] embedding')
    .argument('<text>', 'the query; a trailing [RET] is added when absent')
    .option('--bundle <dir>', 'model bundle directory (default: FROMAGE_BUNDLE)')
    .option('--index <dir>', 'retrieval index directory (repeatable, or comma-separated; default: FROMAGE_INDEX)', collect, [])
    .option('-k, --count <n>', 'images to return', '3')
    .option('--no-fetch', 'do not download images; every candidate counts as loadable')
    .option('--json', 'print the result as JSON')
    .action(async (text: string, opts: ModelCommandOptions & { count: string }) => {
      const { runRetrieveCommand } = await import('./cli-actions.ts');
      await runRetrieveCommand(text, opts);
    });
}
