import type { Command } from 'commander';

export function registerDiscordCommands(_program: Command): void {
  // Filled in by the Discord work.
}
