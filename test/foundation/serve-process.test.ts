/**
 * `fromage chat` as a real process on the fixture bundle (issue 11): HTTP_PORT answers before
 * the model is loaded and says what the bot waits for, then ready; piped input loses no line.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteHistoryStore } from '../../src/conversation/history.ts';
import { convertFixtureBundleInto } from '../model/helpers.ts';
import { freePort, spawnFromage } from '../support/fromage-process.ts';

let work: string;
let bundle: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-serve-process-'));
  bundle = await convertFixtureBundleInto(join(work, 'bundle'));
}, 60_000);

afterAll(() => rm(work, { recursive: true, force: true }));

describe('fromage chat process', () => {
  it('opens HTTP_PORT before loading the model, then reports ready; answers every piped line', async () => {
    const port = await freePort();
    const proc = spawnFromage('chat', {
      PATH: process.env.PATH ?? '',
      HOME: work,
      FROMAGE_BUNDLE: bundle,
      FROMAGE_DATA_DIR: join(work, 'data'),
      LOG_LEVEL: 'info',
      FROMAGE_THREADS: '1',
      HTTP_PORT: String(port),
      // A platform user would be refused after 1 message; the terminal's user never is.
      FROMAGE_USER_RATE: '1',
      FROMAGE_USER_BURST: '1',
      FROMAGE_QUEUE_LIMIT: '2',
    });
    const { child, exited } = proc;
    const statuses: unknown[] = [];
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`never ready\nstdout:\n${proc.stdout()}\nstderr:\n${proc.stderr()}`);
      const body = await fetch(`http://127.0.0.1:${port}/healthz`).then(
        (r) => r.json() as Promise<{ status: string }>,
        () => undefined,
      );
      if (body) statuses.push(body);
      if (body?.status === 'ready') break;
      await new Promise((r) => setTimeout(r, 25));
    }
    // The port was open while the model loaded (the log says so before the model's own lines).
    const err = proc.stderr();
    expect(err.indexOf('health and metrics served on HTTP_PORT')).toBeGreaterThanOrEqual(0);
    expect(err.indexOf('health and metrics served on HTTP_PORT')).toBeLessThan(err.indexOf('adapter started'));
    for (const s of statuses.slice(0, -1)) expect(s).toMatchObject({ ok: false, status: 'starting', waitingFor: expect.any(Array) });
    expect(statuses.at(-1)).toMatchObject({ ok: true, status: 'ready', adapters: ['shell'] });

    const lines = Array.from({ length: 6 }, (_, i) => `line ${i}`);
    child.stdin.end(lines.map((l) => `${l}\n`).join(''));
    expect(await exited).toBe(0);
    expect(proc.stdout()).not.toMatch(/busy|limit/);
    // Every line was answered (an exchange is kept only once answered), none refused.
    const history = new SqliteHistoryStore(join(work, 'data', 'history.sqlite'), { maxTurns: 50 });
    expect(history.turns('shell:local:terminal:-').filter((t) => t.role === 'user').map((t) => t.text)).toEqual(lines);
    history.close();
  }, 120_000);
});
