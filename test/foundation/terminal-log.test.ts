import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.ts';
import { createTerminalLog, terminalSummary } from '../../src/service/terminal-log.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('terminal log', () => {
  it('keeps the chat prompt clean: once the chat starts, logs go to a file and only warnings show', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fromage-log-'));
    dirs.push(dir);
    const stderr = new PassThrough() as unknown as NodeJS.WriteStream;
    let early = '';
    (stderr as unknown as PassThrough).on('data', (d: Buffer) => (early += d.toString()));
    const log = createTerminalLog(join(dir, 'logs', 'fromage.log'), stderr);
    const logger = createLogger({ LOG_LEVEL: 'info' }, log.stream);
    logger.info('loading the model');
    const shown: string[] = [];
    log.attach((line) => shown.push(line));
    logger.info('adapter started');
    logger.warn({ err: new Error('index slow') }, 'retrieval is slow');
    await new Promise((r) => setTimeout(r, 20));
    await log.close();
    expect(early).toMatch(/loading the model/);
    expect(early).not.toMatch(/adapter started/);
    expect(shown).toEqual(['(warning) retrieval is slow: index slow']);
    const file = readFileSync(join(dir, 'logs', 'fromage.log'), 'utf8');
    expect(file).toMatch(/adapter started/);
    expect(file).toMatch(/retrieval is slow/);
  });

  it('summarises errors and ignores what is not a log line', () => {
    expect(terminalSummary(JSON.stringify({ level: 50, msg: 'request failed' }))).toBe('(error) request failed');
    expect(terminalSummary(JSON.stringify({ level: 30, msg: 'fine' }))).toBeUndefined();
    expect(terminalSummary('not json')).toBeUndefined();
  });
});
