import type { Command } from 'commander';

export function registerConvertCommands(_program: Command): void {
  // Filled in by the Convert work.
}
