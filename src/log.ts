/**
 * pino logger whose every line is scrubbed of secrets: known token shapes (Discord, Slack,
 * Hugging Face, Bearer headers) and the exact values of configured secrets.
 */
import { pino, type Logger, type LoggerOptions } from 'pino';
import pretty from 'pino-pretty';
import type { Config } from './config.ts';
import { secretValues } from './config.ts';

const TOKEN_PATTERNS: RegExp[] = [
  /xox[abprs]-[A-Za-z0-9-]{8,}/g,
  /xapp-[A-Za-z0-9-]{8,}/g,
  /hf_[A-Za-z0-9]{16,}/g,
  /[MNO][A-Za-z\d_-]{23,27}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,}/g,
  /(Bearer|Bot)\s+[A-Za-z0-9._~+/=-]{8,}/g,
];

export function redact(text: string, secrets: readonly string[] = []): string {
  let out = text;
  for (const s of secrets) if (s.length >= 6) out = out.split(s).join('[redacted]');
  for (const p of TOKEN_PATTERNS) out = out.replace(p, '[redacted]');
  return out;
}

export function createLogger(
  config: Pick<Config, 'LOG_LEVEL'> & Partial<Config>,
  destination: NodeJS.WritableStream = process.stderr,
): Logger {
  const secrets = secretValues(config as Config);
  // People at a terminal get readable lines; services and log collectors get JSON.
  const sink: NodeJS.WritableStream =
    (destination as NodeJS.WriteStream).isTTY === true
      ? pretty({ colorize: true, translateTime: 'HH:MM:ss', ignore: 'pid,hostname', destination: destination as NodeJS.WriteStream })
      : destination;
  const stream = {
    write(line: string) {
      sink.write(redact(line, secrets));
    },
  };
  const options: LoggerOptions = {
    level: config.LOG_LEVEL,
    redact: { paths: ['*.token', '*.authorization', '*.headers.authorization', 'config.*TOKEN', 'config.*SECRET'], censor: '[redacted]' },
  };
  return pino(options, stream);
}

export type { Logger };
