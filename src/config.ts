/**
 * Configuration from the environment (and `.env`), validated once at start. Every message
 * names the variable and how to fix it.
 */
import { config as readDotenv } from 'dotenv';
import { z } from 'zod';
import { UserFacingError } from './conversation/errors.ts';

/**
 * Reads `.env` from the working directory into process.env (variables already set win). The
 * CLI calls it once before any command runs, so every command sees the same configuration.
 */
export function loadDotenvFile(): void {
  readDotenv({ quiet: true });
}

const bool = z
  .enum(['1', '0', 'true', 'false', 'yes', 'no', 'on', 'off'])
  .transform((v) => ['1', 'true', 'yes', 'on'].includes(v));

const csv = z
  .string()
  .transform((s) => s.split(',').map((x) => x.trim()).filter((x) => x.length > 0));

const port = z.coerce.number().int().min(1).max(65535);

const httpUrl = z.url({ protocol: /^https?$/ });

export const configSchema = z.object({
  FROMAGE_BUNDLE: z.string().min(1).default('checkpoints/fromage-opt-6.7b'),
  FROMAGE_INDEX: csv.default([]),
  FROMAGE_DEVICE: z.enum(['cpu', 'cuda']).default('cpu'),
  FROMAGE_THREADS: z.coerce.number().int().min(0).max(256).default(0),
  FROMAGE_DATA_DIR: z.string().min(1).default('data'),
  FROMAGE_FETCH_ALLOW: csv.default([]),
  FROMAGE_BATCH: z.coerce.number().int().min(1).max(64).default(4),
  FROMAGE_QUEUE_LIMIT: z.coerce.number().int().min(1).max(100_000).default(50),
  FROMAGE_USER_RATE: z.coerce.number().min(0.01).max(1000).default(6),
  FROMAGE_USER_BURST: z.coerce.number().int().min(1).max(1000).default(3),
  FROMAGE_JOB_TIMEOUT_S: z.coerce.number().min(1).max(3600).default(300),
  FROMAGE_HISTORY_TURNS: z.coerce.number().int().min(1).max(10_000).default(50),
  FROMAGE_MAX_IMAGES_PER_MESSAGE: z.coerce.number().int().min(1).max(50).default(4),
  FROMAGE_MAX_IMAGE_BYTES: z.coerce.number().int().min(1024).default(20 * 1024 * 1024),
  FROMAGE_SETUP_YES: bool.default(false),
  /** Unset: computed at start (src/serving/kv-config.ts); 0: prefix reuse off. */
  FROMAGE_KV_CACHE_MB: z.coerce.number().int().min(0).max(4_194_304).optional(),
  FROMAGE_KV_DISK_MB: z.coerce.number().int().min(0).max(67_108_864).default(4096),
  FROMAGE_KV_CODEC: z.enum(['fp32', 'fp16', 'int8']).default('fp32'),
  /** Set: `fromage serve` is a gateway and `fromage worker` processes hold the model (src/remote). */
  FROMAGE_REDIS_URL: z.string().regex(/^rediss?:\/\/./, 'must start with redis:// or rediss:// (TLS)').optional(),
  FROMAGE_REDIS_CA: z.string().min(1).optional(),
  FROMAGE_AFFINITY_WAIT_MS: z.coerce.number().int().min(0).max(60_000).default(500),
  FROMAGE_WORKER_TIMEOUT_S: z.coerce.number().min(1).max(600).default(5),
  FROMAGE_WORKER_WAIT_S: z.coerce.number().min(0).max(3600).default(30),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  HTTP_PORT: port.optional(),

  FROMAGE_WEB_PORT: port.optional(),
  FROMAGE_WEB_HOST: z.string().min(1).default('127.0.0.1'),
  FROMAGE_WEB_TOKEN: z.string().min(16, 'must be at least 16 characters (for example `openssl rand -hex 32`)').optional(),

  DISCORD_TOKEN: z.string().min(1).optional(),
  DISCORD_APPLICATION_ID: z.string().regex(/^\d+$/, 'must be the numeric application id').optional(),
  DISCORD_API_BASE: httpUrl.default('https://discord.com/api'),
  DISCORD_GUILD_ALLOW: csv.default([]),
  DISCORD_CHANNEL_ALLOW: csv.default([]),
  DISCORD_ROLE_ALLOW: csv.default([]),
  DISCORD_SETTINGS_ROLE: z.string().min(1).optional(),
  DISCORD_DMS: bool.default(true),

  SLACK_BOT_TOKEN: z.string().regex(/^xoxb-/, 'must start with xoxb- (the Bot User OAuth Token)').optional(),
  SLACK_APP_TOKEN: z.string().regex(/^xapp-/, 'must start with xapp- (an app-level token with connections:write)').optional(),
  SLACK_SIGNING_SECRET: z.string().min(1).optional(),
  SLACK_PORT: port.optional(),
  SLACK_API_URL: httpUrl.default('https://slack.com/api/'),

  HF_ENDPOINT: httpUrl.default('https://huggingface.co'),
  HF_TOKEN: z.string().min(1).optional(),
});

export type Config = z.infer<typeof configSchema>;

/** Names whose values never reach a log line. */
export const SECRET_KEYS = ['DISCORD_TOKEN', 'SLACK_BOT_TOKEN', 'SLACK_APP_TOKEN', 'SLACK_SIGNING_SECRET', 'HF_TOKEN', 'FROMAGE_WEB_TOKEN'] as const;

const HINTS: Partial<Record<keyof Config, string>> = {
  FROMAGE_DEVICE: 'set it to cpu or cuda',
  FROMAGE_KV_CACHE_MB: 'MiB of memory for all KV caches: those of answers being written first, kept conversation caches in what is left; leave it empty for the default, 0 turns reuse off (live caches are then bounded only by FROMAGE_BATCH and the context)',
  FROMAGE_KV_DISK_MB: 'MiB of disk for spilled conversation caches; 0 turns the spill off',
  FROMAGE_KV_CODEC: 'fp32 (default, exact), fp16 or int8',
  FROMAGE_REDIS_URL: 'for example redis://:password@redis-host:6379/0, or rediss://... for TLS; leave it empty to run the model in this process',
  DISCORD_TOKEN: 'copy the bot token from the Discord developer portal (Bot > Reset Token)',
  DISCORD_APPLICATION_ID: 'copy the Application ID from the Discord developer portal (General Information)',
  DISCORD_API_BASE: 'leave it unset for discord.com, or give a full http(s) URL',
  SLACK_BOT_TOKEN: 'copy the Bot User OAuth Token (xoxb-...) from your Slack app (OAuth & Permissions)',
  SLACK_APP_TOKEN: 'create an app-level token with connections:write (Basic Information > App-Level Tokens)',
  SLACK_API_URL: 'leave it unset for slack.com, or give a full http(s) URL',
  HF_ENDPOINT: 'leave it unset for huggingface.co, or give a full http(s) URL of a mirror',
};

export class ConfigError extends UserFacingError {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}\nFix these in .env or the environment (see .env.example).`);
  }
}

/** The number schema under a variable's default/optional wrappers, if it is a numeric one. */
function numberSchema(name: string): z.ZodNumber | undefined {
  let t: unknown = (configSchema.shape as Record<string, unknown>)[name];
  while (t && !(t instanceof z.ZodNumber) && typeof (t as { unwrap?: unknown }).unwrap === 'function') t = (t as { unwrap: () => unknown }).unwrap();
  return t instanceof z.ZodNumber ? t : undefined;
}

/**
 * zod's "expected number, received NaN" names neither the accepted range nor an example;
 * every numeric variable gets one message shape instead: what is accepted, a value that
 * works, and what was given.
 */
function numberProblem(name: string, raw: string | undefined): string | undefined {
  const n = numberSchema(name);
  if (!n) return undefined;
  const min = n.minValue ?? undefined;
  const max = n.maxValue !== null && n.maxValue < Number.MAX_SAFE_INTEGER ? n.maxValue : undefined;
  const kind = n.isInt ? 'a whole number' : 'a number';
  const range = min !== undefined && max !== undefined ? ` from ${min} to ${max}` : min !== undefined ? ` of at least ${min}` : max !== undefined ? ` of at most ${max}` : '';
  const fallback = (configSchema.parse({}) as Record<string, unknown>)[name];
  const example = typeof fallback === 'number' ? fallback : name.endsWith('PORT') ? 8080 : Math.max(min ?? 1, 1);
  return `${name}: expected ${kind}${range}, such as ${example}; got '${raw ?? ''}'`;
}

/** Parses the environment; empty strings count as unset (as an untouched `.env.example` line). */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const cleaned: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && v.trim() !== '') cleaned[k] = v.trim();
  const parsed = configSchema.safeParse(cleaned);
  const problems: string[] = [];
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const name = String(issue.path[0]) as keyof Config;
      const numeric = numberProblem(name, cleaned[name]);
      if (numeric) {
        problems.push(numeric);
        continue;
      }
      const hint = HINTS[name];
      problems.push(`${name}: ${issue.message}${hint ? ` (${hint})` : ''}`);
    }
    throw new ConfigError(problems);
  }
  const c = parsed.data;
  if (c.DISCORD_TOKEN && !c.DISCORD_APPLICATION_ID)
    problems.push(`DISCORD_APPLICATION_ID: required when DISCORD_TOKEN is set (${HINTS.DISCORD_APPLICATION_ID})`);
  if (c.SLACK_BOT_TOKEN && !c.SLACK_APP_TOKEN && !c.SLACK_SIGNING_SECRET)
    problems.push('SLACK_APP_TOKEN: set it for Socket Mode, or set SLACK_SIGNING_SECRET and SLACK_PORT for HTTP mode');
  if ((c.SLACK_APP_TOKEN || c.SLACK_SIGNING_SECRET) && !c.SLACK_BOT_TOKEN)
    problems.push(`SLACK_BOT_TOKEN: required when a Slack app token or signing secret is set (${HINTS.SLACK_BOT_TOKEN})`);
  if (c.SLACK_SIGNING_SECRET && !c.SLACK_APP_TOKEN && !c.SLACK_PORT)
    problems.push('SLACK_PORT: required for HTTP mode (SLACK_SIGNING_SECRET without SLACK_APP_TOKEN)');
  if (problems.length) throw new ConfigError(problems);
  return c;
}

/** Secret values present in the config, for log redaction. */
export function secretValues(config: Config): string[] {
  const values = SECRET_KEYS.map((k) => config[k]).filter((v): v is string => typeof v === 'string' && v.length >= 6);
  // The Redis URL's password alone (an error message may quote it without the URL).
  const redisPassword = config.FROMAGE_REDIS_URL ? /^rediss?:\/\/[^:@/]*:([^@/]+)@/.exec(config.FROMAGE_REDIS_URL)?.[1] : undefined;
  if (config.FROMAGE_REDIS_URL) values.push(config.FROMAGE_REDIS_URL);
  if (redisPassword) values.push(redisPassword, safeDecode(redisPassword));
  return values.filter((v) => v.length >= 6);
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
