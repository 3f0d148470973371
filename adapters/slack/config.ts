/**
 * The settings the Slack adapter reads. The service passes its whole configuration (a superset);
 * the adapter names only what it uses, so it depends on src/conversation alone.
 */
export interface SlackConfig {
  readonly SLACK_BOT_TOKEN?: string;
  readonly SLACK_APP_TOKEN?: string;
  readonly SLACK_SIGNING_SECRET?: string;
  readonly SLACK_PORT?: number;
  readonly SLACK_API_URL: string;
  readonly FROMAGE_MAX_IMAGES_PER_MESSAGE: number;
  readonly FROMAGE_MAX_IMAGE_BYTES: number;
}
