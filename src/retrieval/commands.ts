import type { Command } from 'commander';

export function registerIndexCommands(_program: Command): void {
  // Filled in by the Index work.
}
