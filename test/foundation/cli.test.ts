import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { formatCliError } from '../../src/cli.ts';
import { UserFacingError } from '../../src/conversation/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'fromage-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const BIN = resolve('bin/fromage.js');

/**
 * Runs the real CLI in a child process, stdin closed (not a terminal), in `cwd` (default: an
 * empty temp folder, so no .env unless a test writes one there).
 */
function fromage(args: string[], env: Record<string, string> = {}, cwd = dir) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    cwd,
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

  it('explains a missing bundle once, not as a log line and again as the message', () => {
    const r = fromage(['serve'], { FROMAGE_BUNDLE: join(dir, 'no-bundle'), LOG_LEVEL: 'info' });
    expect(r.code).toBe(1);
    expect(r.err.split('no-bundle').length - 1).toBe(1);
    expect(r.err).toMatch(/^error: No model bundle at /m);
  });

  it('prints its version', () => {
    const r = fromage(['--version']);
    expect(r.code).toBe(0);
    expect(r.out.trim()).toBe((JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version);
  });

  it('prefixes every error with `error: `, a bug with its trace after the message', () => {
    expect(formatCliError(new UserFacingError('bad thing; do this'))).toEqual({ text: 'error: bad thing; do this\n', exitCode: 1 });
    const bug = formatCliError(new TypeError('x is undefined'));
    expect(bug.exitCode).toBe(1);
    expect(bug.text).toMatch(/^error: x is undefined\n\(unexpected: this is a bug in fromage; .*\)\n {4}at /);
    expect(formatCliError('thrown string').text).toMatch(/^error: thrown string\n/);
    // commander's own messages use the same prefix
    expect(fromage(['index', 'search']).err).toMatch(/^error: required option/);
  });

  it('reads .env in the working folder for every command that reads settings', () => {
    const cwd = join(dir, 'with-env');
    mkdirSync(cwd, { recursive: true });
    // A value only .env holds; each command reporting it proves it read the file.
    writeFileSync(join(cwd, '.env'), 'FROMAGE_DEVICE=tpu\n');
    for (const args of [
      ['serve'],
      ['chat'],
      ['setup', '--dry-run'],
      ['index', 'build', '--bundle', 'b', '--images', 'i', '--out', 'o'],
      ['index', 'prune', '--index', 'x'],
      ['discord', 'invite'],
    ]) {
      const r = fromage(args, {}, cwd);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.err, args.join(' ')).toMatch(/FROMAGE_DEVICE: .*set it to cpu or cuda/);
    }
  });

  it('lists its commands', () => {
    const r = fromage(['--help']);
    expect(r.code).toBe(0);
    for (const c of ['serve', 'chat', 'setup', 'convert', 'inspect', 'generate', 'retrieve', 'index']) expect(r.out).toContain(c);
  });
});
