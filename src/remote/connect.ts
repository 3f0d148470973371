/**
 * The first connection to Redis, with a deadline and a message that names the cause: ioredis
 * otherwise retries for ever (as BullMQ needs once running), so a wrong password, host or CA
 * would look like a hang at start.
 */
import { Redis } from 'ioredis';
import { UserFacingError } from '../conversation/errors.ts';
import type { RedisTarget } from './redis-url.ts';

export class RedisUnreachableError extends UserFacingError {}

export function explainRedisError(message: string, target: RedisTarget): string {
  const where = `Redis at ${target.redacted}`;
  if (/WRONGPASS|invalid password|invalid username-password/i.test(message)) return `${where} refused the password: check the password in FROMAGE_REDIS_URL (redis://:password@host:port/db)`;
  if (/NOAUTH|Authentication required/i.test(message)) return `${where} requires a password: put it in FROMAGE_REDIS_URL as redis://:password@host:port/db`;
  if (/certificate|self.signed|unable to verify|CERT_|altnames/i.test(message))
    return `${where}: the TLS certificate was not accepted (${message}); set FROMAGE_REDIS_CA to the PEM file of the CA that signed it, or use a certificate for this host name`;
  if (/ECONNREFUSED/.test(message)) return `${where}: nothing accepts connections there (${message}); is redis-server running, and is the host and port in FROMAGE_REDIS_URL right?`;
  if (/ENOTFOUND|EAI_AGAIN/.test(message)) return `${where}: the host name does not resolve (${message}); check the host in FROMAGE_REDIS_URL`;
  if (/ECONNRESET|wrong version number|packet length|socket hang up/i.test(message))
    return `${where}: the connection was dropped (${message}); a rediss:// URL needs a TLS port and a redis:// URL a plain one`;
  return `${where} cannot be reached: ${message}`;
}

/** Waits until the connection answers PING, else throws RedisUnreachableError with the cause. */
export async function connectOrExplain(client: Redis, target: RedisTarget, timeoutMs = 15_000): Promise<void> {
  let last = 'no answer';
  const onError = (err: Error) => {
    last = err.message;
  };
  client.on('error', onError);
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      client.ping(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(last)), timeoutMs);
      }),
    ]);
  } catch (err) {
    client.disconnect();
    throw new RedisUnreachableError(explainRedisError((err as Error).message === 'no answer' ? last : (err as Error).message, target));
  } finally {
    clearTimeout(timer);
    client.off('error', onError);
  }
}

export function newClient(target: RedisTarget): Redis {
  const c = new Redis({ ...target.options });
  // Errors are reported where they matter (connectOrExplain, the outage log); not as unhandled events.
  c.on('error', () => {});
  return c;
}
