/** Limits on per-conversation settings; adapters pass user input through `parseSettingsChanges`. */
import { z } from 'zod';
import type { ConversationSettings } from './types.ts';

export const settingsChangesSchema = z
  .object({
    retScaleFactor: z.coerce.number().min(0).max(5),
    maxImages: z.coerce.number().int().min(1).max(4),
    maxWords: z.coerce.number().int().min(1).max(128),
    temperature: z.coerce.number().min(0).max(2),
  })
  .partial()
  .strict();

/** User-facing names, as the slash commands and the shell spell them. */
export const SETTING_NAMES: Record<string, keyof ConversationSettings> = {
  ret_scale: 'retScaleFactor',
  ret_scale_factor: 'retScaleFactor',
  max_images: 'maxImages',
  words: 'maxWords',
  max_words: 'maxWords',
  temperature: 'temperature',
};

export type SettingsParse = { ok: true; changes: Partial<ConversationSettings> } | { ok: false; message: string };

/** Validates changes given by user-facing name (`words=48`) or field name. */
export function parseSettingsChanges(input: Record<string, unknown>): SettingsParse {
  const mapped: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(input)) {
    if (value === undefined || value === null || value === '') continue;
    const key = SETTING_NAMES[name] ?? (Object.values(SETTING_NAMES).includes(name as keyof ConversationSettings) ? name : undefined);
    if (!key) return { ok: false, message: `Unknown setting "${name}". Known: ret_scale, max_images, words, temperature.` };
    mapped[key] = value;
  }
  const parsed = settingsChangesSchema.safeParse(mapped);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = String(issue.path[0] ?? '');
    const name = Object.entries(SETTING_NAMES).find(([, v]) => v === field)?.[0] ?? field;
    return { ok: false, message: `Setting ${name}: ${issue.message}.` };
  }
  return { ok: true, changes: parsed.data };
}

export function describeSettings(s: ConversationSettings): string {
  return `ret_scale=${s.retScaleFactor} max_images=${s.maxImages} words=${s.maxWords} temperature=${s.temperature}`;
}
