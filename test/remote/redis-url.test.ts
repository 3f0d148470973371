import { readdir, readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, secretValues } from '../../src/config.ts';
import { redact } from '../../src/log.ts';
import { parseRedisUrl, RedisUrlError } from '../../src/remote/redis-url.ts';

describe('FROMAGE_REDIS_URL', () => {
  it('parses host, port, database and password, and redacts the password', () => {
    const t = parseRedisUrl('redis://:s3cr%40t-pass@redis.lan:6390/2');
    expect(t.options).toMatchObject({ host: 'redis.lan', port: 6390, db: 2, password: 's3cr@t-pass', maxRetriesPerRequest: null });
    expect(t.options.tls).toBeUndefined();
    expect(t.redacted).toBe('redis://:***@redis.lan:6390/2');
    expect(t.redacted).not.toContain('s3cr');
  });

  it('turns TLS on for rediss:// with the host as server name, and takes a user name (ACL)', () => {
    const t = parseRedisUrl('rediss://bot:pw-123456@cache.example.com');
    expect(t.options).toMatchObject({ host: 'cache.example.com', port: 6379, db: 0, username: 'bot', password: 'pw-123456', tls: { servername: 'cache.example.com' } });
    expect(t.redacted).toBe('rediss://bot:***@cache.example.com/0');
  });

  it('says what is wrong with a bad URL, a wrong scheme, a bad database or an unreadable CA file', () => {
    expect(() => parseRedisUrl('not a url')).toThrow(RedisUrlError);
    expect(() => parseRedisUrl('http://localhost:6379')).toThrow(/must start with redis:\/\/ or rediss:\/\//);
    expect(() => parseRedisUrl('redis://localhost/x')).toThrow(/database after the host must be a number/);
    expect(() => parseRedisUrl('rediss://localhost', '/nonexistent/ca.pem')).toThrow(/FROMAGE_REDIS_CA: cannot read \/nonexistent\/ca.pem/);
  });

  it('is validated by the configuration, and its password is scrubbed from log lines', () => {
    expect(() => loadConfig({ FROMAGE_REDIS_URL: 'localhost:6379' })).toThrow(ConfigError);
    expect(() => loadConfig({ FROMAGE_REDIS_URL: 'localhost:6379' })).toThrow(/FROMAGE_REDIS_URL: must start with redis:\/\/ or rediss:\/\//);
    const config = loadConfig({ FROMAGE_REDIS_URL: 'redis://:hunter2-secret@10.0.0.5:6379/0' });
    const secrets = secretValues(config);
    expect(redact('connecting to redis://:hunter2-secret@10.0.0.5:6379/0', secrets)).not.toContain('hunter2');
    expect(redact('auth failed for hunter2-secret', secrets)).toBe('auth failed for [redacted]');
  });

  it('leaves everything as before when unset: no Redis setting is required', () => {
    const config = loadConfig({});
    expect(config.FROMAGE_REDIS_URL).toBeUndefined();
    expect(config.FROMAGE_AFFINITY_WAIT_MS).toBe(500);
  });

  it('loads no Redis code on the one-process path: the service and the CLI reach src/remote only by dynamic import', async () => {
    const files = ['src/cli.ts', ...(await readdir('src/service')).map((f) => `src/service/${f}`)];
    for (const file of files) {
      const text = await readFile(file, 'utf8');
      const statics = [...text.matchAll(/^import\s+(?!type\b)[^;]*?from\s+'([^']+)'/gms)].map((m) => m[1]);
      expect(statics.filter((m) => /bullmq|ioredis/.test(m)), file).toEqual([]);
      expect(statics.filter((m) => m.includes('/remote/') && !m.endsWith('/remote/commands.ts')), file).toEqual([]);
    }
    // The `worker` command's registration imports nothing but commander's types.
    const commands = await readFile('src/remote/commands.ts', 'utf8');
    expect([...commands.matchAll(/^import\s+(?!type\b)/gm)]).toEqual([]);
  });
});
