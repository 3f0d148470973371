import type { Command } from 'commander';

export function registerSetupCommands(_program: Command): void {
  // Filled in by the Setup work.
}
