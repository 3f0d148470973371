/**
 * FROMAGE_REDIS_URL -> ioredis options. The URL carries the password, so it is parsed once here
 * and only its redacted form (`redacted()`) is ever logged or shown on /healthz.
 */
import { readFileSync } from 'node:fs';
import type { RedisOptions } from 'ioredis';
import { UserFacingError } from '../conversation/errors.ts';

export class RedisUrlError extends UserFacingError {}

export interface RedisTarget {
  readonly options: RedisOptions;
  /** `redis://:***@host:port/db`: safe for logs. */
  readonly redacted: string;
  /** The password, so the logger can scrub it wherever it appears. */
  readonly password?: string;
}

/**
 * Accepts `redis://[user[:password]@]host[:port][/db]` and `rediss://` (TLS). `caFile` adds a CA
 * for a server certificate that the system store does not know (FROMAGE_REDIS_CA).
 */
export function parseRedisUrl(url: string, caFile?: string): RedisTarget {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RedisUrlError('FROMAGE_REDIS_URL is not a URL; write it as redis://[:password@]host:6379/0 or rediss://... for TLS');
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:')
    throw new RedisUrlError(`FROMAGE_REDIS_URL must start with redis:// or rediss:// (TLS), not ${u.protocol}//`);
  if (!u.hostname) throw new RedisUrlError('FROMAGE_REDIS_URL names no host; write it as redis://host:6379');
  const dbText = u.pathname.replace(/^\//, '');
  const db = dbText === '' ? 0 : Number(dbText);
  if (!Number.isInteger(db) || db < 0) throw new RedisUrlError(`FROMAGE_REDIS_URL: the database after the host must be a number such as /0, not /${dbText}`);
  const password = u.password ? decodeURIComponent(u.password) : undefined;
  const username = u.username ? decodeURIComponent(u.username) : undefined;
  const tls = u.protocol === 'rediss:';
  let ca: Buffer | undefined;
  if (caFile) {
    try {
      ca = readFileSync(caFile);
    } catch (err) {
      throw new RedisUrlError(`FROMAGE_REDIS_CA: cannot read ${caFile} (${(err as Error).message}); give the path of the PEM file that signed the Redis server's certificate`);
    }
  }
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const options: RedisOptions = {
    host,
    port: u.port ? Number(u.port) : 6379,
    db,
    ...(username ? { username } : {}),
    ...(password ? { password } : {}),
    ...(tls ? { tls: { servername: host, ...(ca ? { ca } : {}) } } : {}),
    // BullMQ needs both: commands wait for a reconnect instead of failing, and a Redis restart is ridden out.
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    retryStrategy: (times) => Math.min(200 + times * 200, 2000),
  };
  const auth = password ? `${username ?? ''}:***@` : username ? `${username}@` : '';
  return { options, redacted: `${u.protocol}//${auth}${u.host}/${db}`, password };
}
