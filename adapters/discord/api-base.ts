/**
 * DISCORD_API_BASE as @discordjs/rest wants it: the base without a trailing slash or API
 * version, since the client appends `/v10/...` itself. A version in the URL (Spacebar's docs
 * write `/api/v9`) is kept as the version to speak instead of doubling it into `/v9/v10`.
 */
export interface ApiBase {
  readonly api: string;
  /** Only when the configured URL named one; otherwise discord.js's default (10). */
  readonly version?: string;
}

export function parseApiBase(configured: string): ApiBase {
  const trimmed = configured.replace(/\/+$/, '');
  const match = trimmed.match(/^(.*)\/v(\d+)$/);
  return match ? { api: match[1], version: match[2] } : { api: trimmed };
}
