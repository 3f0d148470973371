import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ConfigError, configSchema, loadConfig } from '../../src/config.ts';
import { createLogger, redact } from '../../src/log.ts';

describe('configuration', () => {
  it('has sane defaults with an empty environment', () => {
    const c = loadConfig({});
    expect(c.FROMAGE_BUNDLE).toBe('checkpoints/fromage-opt-6.7b');
    expect(c.FROMAGE_DEVICE).toBe('cpu');
    expect(c.FROMAGE_INDEX).toEqual([]);
    expect(c.DISCORD_API_BASE).toBe('https://discord.com/api');
  });

  it('treats blank values as unset and splits lists', () => {
    const c = loadConfig({ DISCORD_TOKEN: '  ', FROMAGE_INDEX: 'a, b,,c' });
    expect(c.DISCORD_TOKEN).toBeUndefined();
    expect(c.FROMAGE_INDEX).toEqual(['a', 'b', 'c']);
  });

  it('names the variable and the fix for a bad value', () => {
    expect(() => loadConfig({ FROMAGE_DEVICE: 'tpu' })).toThrow(/FROMAGE_DEVICE: .*set it to cpu or cuda/s);
    expect(() => loadConfig({ HTTP_PORT: 'eighty' })).toThrow(/HTTP_PORT/);
    expect(() => loadConfig({ SLACK_BOT_TOKEN: 'xoxp-user' })).toThrow(/SLACK_BOT_TOKEN: must start with xoxb-/);
    expect(() => loadConfig({ DISCORD_API_BASE: 'ftp://x' })).toThrow(/DISCORD_API_BASE/);
  });

  it('says what a numeric variable accepts, with an example, for every numeric variable', () => {
    const problemFor = (name: string, value: string): string | undefined => {
      try {
        loadConfig({ [name]: value });
        return undefined;
      } catch (e) {
        return (e as ConfigError).problems.find((p) => p.startsWith(`${name}:`));
      }
    };
    expect(problemFor('FROMAGE_USER_RATE', 'abc')).toBe("FROMAGE_USER_RATE: expected a number from 0.01 to 1000, such as 6; got 'abc'");
    expect(problemFor('FROMAGE_QUEUE_LIMIT', '2.5')).toBe("FROMAGE_QUEUE_LIMIT: expected a whole number from 1 to 100000, such as 50; got '2.5'");
    expect(problemFor('HTTP_PORT', '99999')).toBe("HTTP_PORT: expected a whole number from 1 to 65535, such as 8080; got '99999'");
    // Every variable whose default is a number, or that is a port, gets the same shape for 'abc'.
    const defaults = loadConfig({}) as Record<string, unknown>;
    const numeric = Object.keys(configSchema.shape).filter((k) => typeof defaults[k] === 'number' || k.endsWith('_PORT') || problemFor(k, 'abc')?.includes('number'));
    expect(numeric.length).toBeGreaterThanOrEqual(10);
    for (const name of numeric) {
      const p = problemFor(name, 'abc');
      expect(p, name).toMatch(new RegExp(`^${name}: expected a (whole )?number.*, such as \\d[\\d.]*; got 'abc'$`));
      expect(p, name).not.toMatch(/NaN|received/);
    }
  });

  it('reports missing companions of a credential', () => {
    const err = (() => {
      try {
        loadConfig({ DISCORD_TOKEN: 'abc.def.ghi', SLACK_BOT_TOKEN: 'xoxb-1-2' });
      } catch (e) {
        return e as ConfigError;
      }
      throw new Error('expected a ConfigError');
    })();
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.problems.join('\n')).toMatch(/DISCORD_APPLICATION_ID: required when DISCORD_TOKEN is set/);
    expect(err.problems.join('\n')).toMatch(/SLACK_APP_TOKEN: set it for Socket Mode/);
    expect(() => loadConfig({ SLACK_BOT_TOKEN: 'xoxb-1', SLACK_SIGNING_SECRET: 's3cret' })).toThrow(/SLACK_PORT: required for HTTP mode/);
  });
});

describe('log redaction', () => {
  it('scrubs token shapes and configured secrets from every line', () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(chunk.toString());
        cb();
      },
    });
    const discordLike = 'MTIzNDU2Nzg5MDEyMzQ1Njc4.GabcDE.abcdefghijklmnopqrstuvwxyz0123';
    const config = loadConfig({ DISCORD_TOKEN: discordLike, DISCORD_APPLICATION_ID: '123', HF_TOKEN: 'plain-secret-value', LOG_LEVEL: 'info' });
    const log = createLogger(config, sink);
    log.info({ token: discordLike, note: 'uses plain-secret-value' }, `connecting with ${discordLike} and xoxb-123456789-abcdef`);
    log.info({ headers: { authorization: 'Bearer hf_abcdefghijklmnopqrstuvwxyz' } }, 'request');
    const all = lines.join('');
    expect(all).not.toContain(discordLike);
    expect(all).not.toContain('plain-secret-value');
    expect(all).not.toContain('xoxb-123456789');
    expect(all).not.toContain('hf_abcdefghijklmnop');
    expect(all).toContain('[redacted]');
  });

  it('leaves ordinary text alone', () => {
    expect(redact('hello world, queue depth 3')).toBe('hello world, queue depth 3');
  });
});
