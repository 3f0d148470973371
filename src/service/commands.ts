import type { Command } from 'commander';

export function registerServiceCommands(_program: Command): void {
  // Filled in by the Service work.
}
