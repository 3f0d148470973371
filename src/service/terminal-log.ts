/**
 * Where log lines go while a person chats in this terminal. Until the chat starts they go to
 * stderr as usual (setup, model loading). Once it starts, a log line printed at the prompt would
 * land inside what the person is typing (`you> [14:51:11] INFO: ...`), so from then on every
 * line goes to a log file and only warnings and errors are shown, above the prompt.
 */
import { createWriteStream, mkdirSync, type WriteStream } from 'node:fs';
import { dirname } from 'node:path';
import { Writable } from 'node:stream';
import pretty from 'pino-pretty';

export interface TerminalLog {
  /** For `createLogger`: receives pino's JSON lines (already redacted). */
  readonly stream: Writable;
  readonly file: string;
  /** From now on: everything to the file; warnings and errors also through `show`. */
  attach(show: (line: string) => void): void;
  close(): Promise<void>;
}

const LEVEL_NAMES: Record<number, string> = { 40: 'warning', 50: 'error', 60: 'fatal' };

/** A one-line summary of a pino JSON line for the person at the terminal, or undefined below warnings. */
export function terminalSummary(line: string): string | undefined {
  let parsed: { level?: unknown; msg?: unknown; err?: { message?: unknown } };
  try {
    parsed = JSON.parse(line) as typeof parsed;
  } catch {
    return undefined;
  }
  const level = typeof parsed.level === 'number' ? parsed.level : 0;
  if (level < 40) return undefined;
  const name = LEVEL_NAMES[Math.min(60, Math.floor(level / 10) * 10)] ?? 'warning';
  const msg = typeof parsed.msg === 'string' ? parsed.msg : '';
  const cause = typeof parsed.err?.message === 'string' ? `: ${parsed.err.message}` : '';
  return `(${name}) ${msg}${cause}`;
}

export function createTerminalLog(file: string, stderr: NodeJS.WriteStream = process.stderr): TerminalLog {
  const before: NodeJS.WritableStream = stderr.isTTY
    ? pretty({ colorize: true, translateTime: 'HH:MM:ss', ignore: 'pid,hostname', destination: stderr })
    : stderr;
  let show: ((line: string) => void) | undefined;
  let out: WriteStream | undefined;
  const stream = new Writable({
    write(chunk: Buffer | string, _encoding, callback) {
      const text = chunk.toString();
      if (!show) {
        before.write(text);
        return callback();
      }
      out ??= openLogFile(file);
      out.write(text);
      for (const line of text.split('\n')) {
        const summary = terminalSummary(line);
        if (summary) show(summary);
      }
      callback();
    },
  });
  return {
    stream,
    file,
    attach(s) {
      show = s;
    },
    close: () => new Promise<void>((r) => (out ? out.end(() => r()) : r())),
  };
}

function openLogFile(file: string): WriteStream {
  mkdirSync(dirname(file), { recursive: true });
  return createWriteStream(file, { flags: 'a' });
}
