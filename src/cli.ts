#!/usr/bin/env node
/**
 * `fromage`: one CLI for the service and its tools. Each area registers its own commands
 * (and imports its heavy modules lazily, inside the action), so `fromage --help` stays fast.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { registerServiceCommands } from './service/commands.ts';
import { registerConvertCommands } from './convert/commands.ts';
import { registerModelCommands } from './model/commands.ts';
import { registerIndexCommands } from './retrieval/commands.ts';
import { registerSetupCommands } from './setup/commands.ts';
import { registerDiscordCommands } from '../adapters/discord/commands.ts';
import { registerWorkerCommands } from './remote/commands.ts';

export function buildProgram(): Command {
  const program = new Command('fromage')
    .description('FROMAGe chat bot for Discord, Slack and the terminal, on onnxruntime-node')
    .version(packageVersion(), '-V, --version', 'print the version')
    .showHelpAfterError('(run with --help for usage)')
    // One place reads .env, before any command's action: every command sees the same settings.
    .hook('preAction', async () => (await import('./config.ts')).loadDotenvFile());
  registerServiceCommands(program);
  registerWorkerCommands(program);
  registerSetupCommands(program);
  registerConvertCommands(program);
  registerModelCommands(program);
  registerIndexCommands(program);
  registerDiscordCommands(program, async () => {
    const { loadConfig } = await import('./config.ts');
    return loadConfig(process.env);
  });
  return program;
}

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/**
 * What the CLI prints for an error, always behind the one prefix `error: ` (as commander's own
 * messages): errors marked `userFacing` (src/conversation/errors.ts) say what to do, so only
 * their message; anything else is a bug, so its stack follows for the report.
 */
export function formatCliError(err: unknown): { text: string; exitCode: number } {
  const e = (err instanceof Error ? err : new Error(String(err))) as Error & { exitCode?: number; userFacing?: boolean };
  if (e.userFacing) return { text: `error: ${e.message}\n`, exitCode: e.exitCode ?? 1 };
  const frames = e.stack?.indexOf('\n    at ') ?? -1;
  const trace = frames >= 0 ? `${e.stack!.slice(frames + 1)}\n` : '';
  return { text: `error: ${e.message}\n(unexpected: this is a bug in fromage; the trace below helps a report)\n${trace}`, exitCode: 1 };
}

async function main(): Promise<void> {
  try {
    await buildProgram().parseAsync(process.argv);
  } catch (err) {
    if (err instanceof CommanderError) process.exit(err.exitCode);
    const { text, exitCode } = formatCliError(err);
    process.stderr.write(text);
    process.exit(exitCode);
  }
}

const invokedDirectly = process.argv[1] !== undefined && /(^|[\\/])(cli\.ts|fromage(\.js)?)$/.test(process.argv[1]);
if (invokedDirectly) await main();
