/**
 * rediss:// on loopback: a redis-server with TLS and a password (certificates made with openssl
 * for the test), a `fromage worker` and the gateway's remote engine trusting its CA through
 * FROMAGE_REDIS_CA; and the connection failures a self-hoster causes, each named with its fix.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_SETTINGS } from '../../src/conversation/types.ts';
import { SchedulerRejection } from '../../src/queue/scheduler.ts';
import { RedisUnreachableError } from '../../src/remote/connect.ts';
import { parseRedisUrl } from '../../src/remote/redis-url.ts';
import { RemoteEngine } from '../../src/remote/remote-engine.ts';
import { prepareFixtures, startProc, startWorkerProc, type Fixtures, type Proc } from './cluster.ts';
import { freePort, startTestRedis, type TestRedis } from './redis-server.ts';

const PASSWORD = 'tls-redis-Pa55word';
let work: string;
let f: Fixtures;
let redis: TestRedis;
let plain: TestRedis;
let worker: Proc | undefined;
let ca: string;

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-remote-tls-'));
  const d = (n: string) => join(work, n);
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', d('ca.key'), '-out', d('ca.crt'), '-days', '2', '-subj', '/CN=fromage test CA']);
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', d('server.key'), '-out', d('server.csr'), '-subj', '/CN=127.0.0.1']);
  await writeFile(d('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  openssl(['x509', '-req', '-in', d('server.csr'), '-CA', d('ca.crt'), '-CAkey', d('ca.key'), '-CAcreateserial', '-out', d('server.crt'), '-days', '2', '-extfile', d('ext.cnf')]);
  ca = d('ca.crt');
  redis = await startTestRedis({ password: PASSWORD, tls: { cert: d('server.crt'), key: d('server.key'), ca } });
  plain = await startTestRedis({ password: PASSWORD });
  f = await prepareFixtures(work);
}, 120_000);

afterAll(async () => {
  worker?.kill('SIGKILL');
  await worker?.exited;
  await redis?.destroy();
  await plain?.destroy();
  await f?.images.close();
  await rm(work, { recursive: true, force: true });
});

const open = (url: string, caFile?: string) =>
  RemoteEngine.open({
    redis: parseRedisUrl(url, caFile),
    logger: pino({ level: 'silent' }),
    bundleDir: f.bundle,
    affinityWaitMs: 100,
    noWorkerWaitMs: 10_000,
    jobTimeoutMs: 30_000,
    workerTtlMs: 2000,
    startWaitMs: 20_000,
    connectTimeoutMs: 3000,
  });

describe('rediss:// and connection failures', () => {
  it('gateway and worker talk over TLS with a password, trusting the CA from FROMAGE_REDIS_CA', async () => {
    expect(redis.url.startsWith('rediss://')).toBe(true);
    worker = await startWorkerProc(f, work, redis.url, { name: 'tls', env: { FROMAGE_REDIS_CA: ca } });
    const engine = await open(redis.url, ca);
    try {
      expect(engine.capacity()).toBe(2);
      const r = await engine.chat([{ type: 'text', text: 'Q: over TLS?\nA:' }], { ...DEFAULT_SETTINGS, maxWords: 4 });
      expect(r.generatedTokens).toBeGreaterThan(0);
      expect(JSON.stringify(engine.health())).toContain(`rediss://:***@127.0.0.1:${redis.port}/0`);
      expect(JSON.stringify(engine.health())).not.toContain(PASSWORD);
      expect(worker.output()).not.toContain(PASSWORD);
    } finally {
      await engine.close();
    }
  }, 90_000);

  it('names an untrusted certificate, a wrong password, a missing password and a closed port', async () => {
    await expect(open(redis.url)).rejects.toThrow(/TLS certificate was not accepted .*FROMAGE_REDIS_CA/);
    await expect(open(plain.url.replace(PASSWORD, 'not-the-password'))).rejects.toThrow(/refused the password: check the password in FROMAGE_REDIS_URL/);
    await expect(open(plain.url.replace(`:${PASSWORD}@`, ''))).rejects.toThrow(/requires a password: put it in FROMAGE_REDIS_URL/);
    const closed = await freePort();
    const err = await open(`redis://127.0.0.1:${closed}/0`).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RedisUnreachableError);
    expect((err as Error).message).toMatch(/nothing accepts connections there .*is redis-server running/);
  }, 60_000);

  it('refuses a job as busy, saying so, when no worker runs for FROMAGE_WORKER_WAIT_S', async () => {
    const engine = await RemoteEngine.open({
      redis: parseRedisUrl(plain.url),
      logger: pino({ level: 'silent' }),
      bundleDir: f.bundle,
      affinityWaitMs: 100,
      noWorkerWaitMs: 1000,
      jobTimeoutMs: 30_000,
      workerTtlMs: 2000,
    });
    try {
      expect(engine.capacity()).toBe(0);
      const err = await engine.chat([{ type: 'text', text: 'Q: anyone?\nA:' }], DEFAULT_SETTINGS).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SchedulerRejection);
      expect(err).toMatchObject({ reason: 'busy', message: 'No model worker is running right now; try again in a few minutes.' });
    } finally {
      await engine.close();
    }
  });

  it('`fromage worker` without FROMAGE_REDIS_URL, or with a wrong password, exits at once with the fix', async () => {
    const noUrl = startProc(['src/cli.ts', 'worker'], { FROMAGE_BUNDLE: f.bundle });
    expect(await noUrl.exited).toBe(1);
    expect(noUrl.output()).toMatch(/error: fromage worker needs FROMAGE_REDIS_URL/);
    const wrong = startProc(['src/cli.ts', 'worker'], { FROMAGE_BUNDLE: f.bundle, FROMAGE_REDIS_URL: plain.url.replace(PASSWORD, 'wrong-password-1') });
    expect(await wrong.exited).toBe(1);
    expect(wrong.output()).toMatch(/error: Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+\/0 refused the password/);
    expect(wrong.output()).not.toContain('wrong-password-1');
  }, 60_000);
});
