/**
 * The parts of Slack's payloads the adapter reads, validated with zod. Bolt has verified the
 * request's signature, but fields still vary by event type, subtype and Slack's rollouts, so
 * everything is parsed rather than trusted by shape.
 */
import { z } from 'zod';

export const slackFileSchema = z.object({
  id: z.string(),
  name: z.string().nullish(),
  title: z.string().nullish(),
  mimetype: z.string().nullish(),
  filetype: z.string().nullish(),
  size: z.number().nonnegative().nullish(),
  /** `hosted` for uploads; `external` (Drive, Dropbox links), `snippet`, `tombstone` otherwise. */
  mode: z.string().nullish(),
  url_private_download: z.string().nullish(),
  url_private: z.string().nullish(),
  /** `check_file_info` when Slack has not finished processing the file: ask files.info. */
  file_access: z.string().nullish(),
});
export type SlackFile = z.infer<typeof slackFileSchema>;

/** `app_mention` and `message` events share these fields. */
export const messageEventSchema = z.object({
  type: z.enum(['app_mention', 'message']),
  subtype: z.string().nullish(),
  channel: z.string(),
  channel_type: z.string().nullish(),
  user: z.string().nullish(),
  bot_id: z.string().nullish(),
  text: z.string().nullish(),
  ts: z.string(),
  thread_ts: z.string().nullish(),
  team: z.string().nullish(),
  files: z.array(slackFileSchema).nullish(),
});
export type MessageEvent = z.infer<typeof messageEventSchema>;

export const eventEnvelopeSchema = z.object({
  event_id: z.string().nullish(),
  team_id: z.string().nullish(),
});

export const slashCommandSchema = z.object({
  command: z.string(),
  text: z.string().default(''),
  team_id: z.string(),
  channel_id: z.string(),
  channel_name: z.string().nullish(),
  user_id: z.string(),
  user_name: z.string().nullish(),
  trigger_id: z.string(),
});
export type SlashCommand = z.infer<typeof slashCommandSchema>;

export const filesInfoResponseSchema = z.object({ file: slackFileSchema });
