/** The message box's slash syntax; the buttons send the same words. */
import { parseSettingsChanges } from '../../src/conversation/settings.ts';
import type { Intent } from '../../src/conversation/types.ts';

export type WebCommand =
  | { readonly kind: 'intent'; readonly intent: Intent }
  | { readonly kind: 'help' }
  | { readonly kind: 'undo' }
  | { readonly kind: 'invalid'; readonly message: string };

export const WEB_HELP = [
  'I am FROMAGe: I look at images and talk about them, and I can answer with images I retrieve.',
  'Type a message, add images (the picture button, drag and drop, or paste), and press Enter (Shift+Enter for a new line).',
  'Commands, also as buttons:',
  '  /retrieve <text>  find images for a description',
  '  /reset  forget this conversation',
  '  /undo  take back the last question and its answer',
  '  /settings [ret_scale=1.0] [max_images=2] [words=32] [temperature=0]  show or change how I answer here',
  '  /settings reset  restore the default settings',
  '  /help  this message',
  'Each conversation in the list on the left has its own history. "Save" downloads the conversation as one HTML file with its images; "Delete" removes it and makes me forget it.',
].join('\n');

export function parseWebCommand(raw: string): WebCommand {
  const text = raw.trim();
  const command = /^\/(\w+)\s*([\s\S]*)$/.exec(text);
  if (!command) return { kind: 'intent', intent: { kind: 'chat' } };
  const [, name, arg] = command;
  switch (name.toLowerCase()) {
    case 'retrieve':
      return { kind: 'intent', intent: { kind: 'retrieve', query: arg.trim() } };
    case 'reset':
      return { kind: 'intent', intent: { kind: 'reset' } };
    case 'settings': {
      if (arg.trim().toLowerCase() === 'reset') return { kind: 'intent', intent: { kind: 'settings', changes: {}, reset: true } };
      const pairs: Record<string, string> = {};
      for (const p of arg.split(/\s+/).filter(Boolean)) {
        const [k, v = ''] = p.split('=');
        pairs[k] = v;
      }
      const parsed = parseSettingsChanges(pairs);
      return parsed.ok ? { kind: 'intent', intent: { kind: 'settings', changes: parsed.changes } } : { kind: 'invalid', message: parsed.message };
    }
    case 'help':
      return { kind: 'help' };
    case 'undo':
      return { kind: 'undo' };
    default:
      return { kind: 'invalid', message: `Unknown command /${name}. Type /help to see the commands.` };
  }
}
