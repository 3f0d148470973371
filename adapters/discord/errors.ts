/**
 * Discord API failures the adapter expects in normal life (an interaction that expired, a
 * channel deleted mid-job, a missing permission): classified, logged once, never thrown on.
 */
import { DiscordAPIError } from 'discord.js';
import type { AdapterLogger } from '../../src/conversation/logger.ts';

export type DiscordFailure =
  | 'expired-interaction'
  | 'missing-permissions'
  | 'missing-access'
  | 'unknown-channel'
  | 'unknown-message'
  | 'other';

/** https://discord.com/developers/docs/topics/opcodes-and-status-codes#json */
const CODES: Record<number, DiscordFailure> = {
  10062: 'expired-interaction',
  10015: 'expired-interaction', // Unknown webhook: the interaction token is gone
  50027: 'expired-interaction', // Invalid webhook token
  50013: 'missing-permissions',
  50001: 'missing-access',
  10003: 'unknown-channel',
  10008: 'unknown-message',
};

export function classifyDiscordError(err: unknown): DiscordFailure {
  if (err instanceof DiscordAPIError && typeof err.code === 'number') return CODES[err.code] ?? 'other';
  return 'other';
}

const HINTS: Record<DiscordFailure, string> = {
  'expired-interaction': 'the interaction expired before the bot answered (3 s to acknowledge, 15 min to follow up)',
  'missing-permissions': 'the bot lacks a permission here: grant View Channel, Send Messages, Send Messages in Threads, Attach Files and Read Message History (or re-invite it with `fromage discord invite`)',
  'missing-access': 'the bot cannot see this channel: grant View Channel',
  'unknown-channel': 'the channel was deleted',
  'unknown-message': 'the message was deleted',
  other: 'unexpected Discord error',
};

/**
 * Logs each (failure, place) once: a channel where the bot lacks a permission would otherwise
 * log on every message. Bounded so a long-running bot does not grow it forever.
 */
export class ErrorReporter {
  private readonly seen = new Set<string>();

  constructor(
    private readonly logger: AdapterLogger,
    private readonly capacity = 1000,
  ) {}

  report(err: unknown, where: string, action: string): DiscordFailure {
    const failure = classifyDiscordError(err);
    const key = `${failure}:${where}`;
    if (this.seen.has(key) && failure !== 'other') return failure;
    if (this.seen.size >= this.capacity) this.seen.clear();
    this.seen.add(key);
    const code = err instanceof DiscordAPIError ? err.code : undefined;
    const message = err instanceof Error ? err.message : String(err);
    const level = failure === 'other' ? 'error' : 'warn';
    this.logger[level]({ where, action, failure, code, err: message }, `discord: ${action} failed: ${HINTS[failure]}`);
    return failure;
  }
}
