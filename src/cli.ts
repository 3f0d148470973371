#!/usr/bin/env node
/**
 * `fromage`: one CLI for the service and its tools. Each area registers its own commands
 * (and imports its heavy modules lazily, inside the action), so `fromage --help` stays fast.
 */
import { Command, CommanderError } from 'commander';
import { registerServiceCommands } from './service/commands.ts';
import { registerConvertCommands } from './convert/commands.ts';
import { registerModelCommands } from './model/commands.ts';
import { registerIndexCommands } from './retrieval/commands.ts';
import { registerSetupCommands } from './setup/commands.ts';
import { registerDiscordCommands } from '../adapters/discord/commands.ts';

export function buildProgram(): Command {
  const program = new Command('fromage')
    .description('FROMAGe chat bot for Discord, Slack and the terminal, on onnxruntime-node')
    .showHelpAfterError('(run with --help for usage)');
  registerServiceCommands(program);
  registerSetupCommands(program);
  registerConvertCommands(program);
  registerModelCommands(program);
  registerIndexCommands(program);
  registerDiscordCommands(program, async () => {
    const { config: loadDotenv } = await import('dotenv');
    loadDotenv({ quiet: true });
    const { loadConfig } = await import('./config.ts');
    return loadConfig(process.env);
  });
  return program;
}

async function main(): Promise<void> {
  try {
    await buildProgram().parseAsync(process.argv);
  } catch (err) {
    if (err instanceof CommanderError) process.exit(err.exitCode);
    // Errors marked `userFacing` (see src/conversation/errors.ts) say what to do: no stack trace.
    const e = err as Error & { exitCode?: number; userFacing?: boolean };
    if (e.userFacing) {
      process.stderr.write(`error: ${e.message}\n`);
      process.exit(e.exitCode ?? 1);
    }
    process.stderr.write(`${e.stack ?? String(e)}\n`);
    process.exit(1);
  }
}

const invokedDirectly = process.argv[1] !== undefined && /(^|[\\/])(cli\.ts|fromage(\.js)?)$/.test(process.argv[1]);
if (invokedDirectly) await main();
