import type { Command } from 'commander';

export function registerModelCommands(_program: Command): void {
  // Filled in by the Model work.
}
