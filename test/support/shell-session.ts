/**
 * The bot in a terminal, in-process: the shell adapter's stdin/stdout as streams (type a line,
 * wait for the answer) and the service started with that adapter alone.
 */
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { createShellAdapter } from '../../adapters/shell/index.ts';
import { SqliteHistoryStore } from '../../src/conversation/history.ts';
import { startService, type RunningService } from '../../src/service/service.ts';

export interface ShellTranscript {
  input: PassThrough;
  output: PassThrough;
  /** Everything printed so far. */
  text(): string;
  /** Types a line and waits until the bot has printed text matching `until` after it; returns that text. */
  type(line: string, until: RegExp): Promise<string>;
}

export function shellTranscript(timeoutMs = 30_000): ShellTranscript {
  const input = new PassThrough();
  const output = new PassThrough();
  let transcript = '';
  output.on('data', (d: Buffer) => (transcript += d.toString()));
  async function type(line: string, until: RegExp): Promise<string> {
    const from = transcript.length;
    input.write(`${line}\n`);
    const deadline = Date.now() + timeoutMs;
    while (!until.test(transcript.slice(from))) {
      if (Date.now() > deadline) throw new Error(`no answer matching ${until} after "${line}":\n${transcript.slice(from)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return transcript.slice(from);
  }
  return { input, output, text: () => transcript, type };
}

/**
 * Starts the service with the shell adapter on `shell`'s streams as its only adapter; images it
 * shows are saved under `work`/shell-images, history kept in `work`/data/history.sqlite.
 */
export function startShellService(shell: ShellTranscript, work: string, deps: Pick<Parameters<typeof startService>[0], 'config' | 'logger' | 'engine'>): Promise<RunningService> {
  return startService({
    ...deps,
    adapters: [createShellAdapter({ input: shell.input, output: shell.output, imageDir: join(work, 'shell-images') })],
    history: new SqliteHistoryStore(join(work, 'data', 'history.sqlite'), { maxTurns: 50 }),
  });
}
