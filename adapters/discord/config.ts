/**
 * The settings the Discord adapter reads. The service passes its whole configuration (a
 * superset); the adapter names only what it uses, so it depends on src/conversation alone.
 */
export interface DiscordConfig {
  readonly DISCORD_TOKEN?: string;
  readonly DISCORD_APPLICATION_ID?: string;
  readonly DISCORD_API_BASE: string;
  readonly DISCORD_GUILD_ALLOW: readonly string[];
  readonly DISCORD_CHANNEL_ALLOW: readonly string[];
  readonly DISCORD_ROLE_ALLOW: readonly string[];
  readonly DISCORD_SETTINGS_ROLE?: string;
  readonly DISCORD_DMS: boolean;
  readonly FROMAGE_JOB_TIMEOUT_S: number;
  readonly FROMAGE_MAX_IMAGES_PER_MESSAGE: number;
  readonly FROMAGE_MAX_IMAGE_BYTES: number;
}
