import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const dir = mkdtempSync(join(tmpdir(), 'fromage-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs the real CLI in a child process, stdin closed (not a terminal), no .env. */
function fromage(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], {
    encoding: 'utf8',
    cwd: process.cwd(),
    env: { PATH: process.env.PATH ?? '', HOME: dir, FROMAGE_DATA_DIR: join(dir, 'data'), LOG_LEVEL: 'silent', ...env },
    input: '',
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('fromage CLI', () => {
  it('without a model bundle, says what to run instead of a stack trace', () => {
    const r = fromage(['serve'], { FROMAGE_BUNDLE: join(dir, 'no-bundle') });
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/No model bundle at .*no-bundle/);
    expect(r.err).toMatch(/fromage setup/);
    expect(r.err).not.toMatch(/\n\s+at /);
  });

  it('reports configuration errors by variable name', () => {
    const r = fromage(['serve'], { FROMAGE_DEVICE: 'tpu', SLACK_BOT_TOKEN: 'nope' });
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/FROMAGE_DEVICE: .*cpu or cuda/);
    expect(r.err).toMatch(/SLACK_BOT_TOKEN: must start with xoxb-/);
    expect(r.err).not.toMatch(/\n\s+at /);
  });

  it('lists its commands', () => {
    const r = fromage(['--help']);
    expect(r.code).toBe(0);
    for (const c of ['serve', 'chat', 'setup', 'convert', 'inspect', 'generate', 'retrieve', 'index']) expect(r.out).toContain(c);
  });
});
