/** `fromage <command>` as a real child process (src/cli.ts through tsx), with its output collected, and a free loopback port for it. */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createServer } from 'node:net';

export interface FromageProcess {
  child: ChildProcessWithoutNullStreams;
  /** What it wrote to stdout so far. */
  stdout(): string;
  /** What it wrote to stderr so far. */
  stderr(): string;
  /** stdout and stderr together, in the order they arrived. */
  output(): string;
  /** Its exit code (null when killed by a signal). */
  exited: Promise<number | null>;
}

/** Starts `fromage <command>` with exactly `env` as its environment, stdin/stdout/stderr piped. */
export function spawnFromage(command: string, env: Record<string, string>): FromageProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', command], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let all = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    all += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
    all += d.toString();
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, stdout: () => out, stderr: () => err, output: () => all, exited };
}

/** Waits until `what()` matches `re`; throws with the process's output if it exits first or `timeoutMs` passes. */
export async function waitForOutput(proc: FromageProcess, re: RegExp, what: () => string, timeoutMs: number, pollMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!re.test(what())) {
    if (Date.now() > deadline || proc.child.exitCode !== null) throw new Error(`timed out waiting for ${re}\nstdout:\n${proc.stdout()}\nstderr:\n${proc.stderr()}`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

/** A loopback TCP port that was free a moment ago. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}
