/**
 * What a user asked for, from a `/fromage ...` command or from a mention's text. Slack does
 * not offer slash commands inside threads, so a mention whose whole text is a command word
 * (`@fromage reset`) works there too.
 */
import { parseSettingsChanges } from '../../src/conversation/settings.ts';
import type { Intent } from '../../src/conversation/types.ts';

export type ParsedCommand =
  | { readonly ok: true; readonly intent: Intent; readonly text: string }
  | { readonly ok: false; readonly message: string };

export function usage(command: string): string {
  return [
    `\`${command} retrieve <text>\`: find images that match the text`,
    `\`${command} reset\`: forget this channel's conversation`,
    `\`${command} settings [ret_scale=1.0] [max_images=2] [words=32] [temperature=0]\`: show or change how I answer here; \`${command} settings reset\` restores the defaults`,
    `\`${command} help\`: how to talk to me`,
    'In a thread, mention me with a question and an image; mention me with `reset` to forget the thread.',
  ].join('\n');
}

/** Parses the text after the slash command's name. */
export function parseSlashText(command: string, raw: string): ParsedCommand {
  const text = raw.trim();
  const [word = '', ...rest] = text.split(/\s+/);
  const argument = rest.join(' ').trim();
  switch (word.toLowerCase()) {
    case '':
    case 'help':
      return { ok: true, intent: { kind: 'help' }, text: '' };
    case 'reset':
      return { ok: true, intent: { kind: 'reset' }, text: '' };
    case 'settings':
      return settingsCommand(argument);
    case 'retrieve': {
      if (!argument) return { ok: false, message: `Tell me what to look for: \`${command} retrieve a dog on a beach\`` };
      const query = text.slice(word.length).trim();
      return { ok: true, intent: { kind: 'retrieve', query }, text: query };
    }
    default:
      return { ok: false, message: `I don't know \`${word}\`. Try one of these:\n${usage(command)}` };
  }
}

/** `settings`, `settings reset` or `settings words=48 temperature=0.5`. */
function settingsCommand(argument: string): ParsedCommand {
  if (argument.toLowerCase() === 'reset') return { ok: true, intent: { kind: 'settings', changes: {}, reset: true }, text: '' };
  const bare = argument.split(/\s+/).find((w) => w && !/^\w+=\S+$/.test(w));
  if (bare) return { ok: false, message: `Settings are name=value pairs, like \`settings words=48\`; \`${bare}\` is not one. \`settings reset\` restores the defaults.` };
  const pairs = Object.fromEntries(
    argument
      .split(/\s+/)
      .filter(Boolean)
      .map((p) => {
        const [k, v = ''] = p.split('=');
        return [k, v];
      }),
  );
  const parsed = parseSettingsChanges(pairs);
  if (!parsed.ok) return { ok: false, message: parsed.message };
  return { ok: true, intent: { kind: 'settings', changes: parsed.changes }, text: '' };
}

/** A mention's text: `reset`, `help` or `retrieve <text>` alone are commands, anything else is chat. */
export function intentFromMention(text: string): { intent: Intent; text: string } {
  const match = /^\/?(reset|help|retrieve|settings)\b\s*([\s\S]*)$/i.exec(text.trim());
  if (match) {
    const word = match[1].toLowerCase();
    const argument = match[2].trim();
    if (word === 'reset' && !argument) return { intent: { kind: 'reset' }, text: '' };
    if (word === 'help' && !argument) return { intent: { kind: 'help' }, text: '' };
    if (word === 'retrieve' && argument) return { intent: { kind: 'retrieve', query: argument }, text: argument };
    if (word === 'settings') {
      const parsed = settingsCommand(argument);
      // Not valid settings: an ordinary sentence that starts with the word.
      if (parsed.ok) return { intent: parsed.intent, text: '' };
    }
  }
  return { intent: { kind: 'chat' }, text };
}
