/**
 * The embedded default: a chat in the terminal (like Hubot's shell adapter). Lines are
 * messages; slash commands attach images and reach the same intents as Discord and Slack.
 * Retrieved images are saved into a folder and their paths printed.
 */
import { createReadStream } from 'node:fs';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { parseSettingsChanges } from '../../src/conversation/settings.ts';
import {
  ImageInputError,
  type Adapter,
  type ConversationKey,
  type ImageInput,
  type IncomingMessage,
  type Intent,
  type MessageHandler,
  type Reply,
  type Responder,
} from '../../src/conversation/types.ts';

export interface ShellOptions {
  readonly input: Readable;
  readonly output: Writable;
  /** Where retrieved images are written. */
  readonly imageDir: string;
  /** Show a `you> ` prompt (off when not a terminal). */
  readonly interactive?: boolean;
  /** Called when the user types /quit or input ends. */
  readonly onExit?: () => void;
}

const KEY: ConversationKey = { platform: 'shell', workspace: 'local', channel: 'terminal' };
const URL_FETCH_TIMEOUT_MS = 20_000;

export const SHELL_HELP = [
  'Type a message and press Enter. Commands:',
  '  /image <path or url>  attach an image to your next message',
  '  /retrieve <text>      find images for a description',
  '  /reset                forget this conversation',
  '  /settings [k=v ...]   show or change ret_scale, max_images, words, temperature',
  '  /help                 this help',
  '  /quit                 leave',
].join('\n');

export function createShellAdapter(options: ShellOptions): Adapter {
  let rl: Interface | undefined;
  let pending: ImageInput[] = [];
  let counter = 0;
  let saved = 0;
  const inFlight = new Set<Promise<void>>();
  const print = (line: string) => options.output.write(`${line}\n`);
  const prompt = () => {
    if (options.interactive) options.output.write('you> ');
  };

  function responder(): Responder {
    let lastQueued = -1;
    return {
      async send(reply: Reply) {
        const label = reply.kind === 'error' ? 'fromage (error)> ' : reply.kind === 'busy' ? 'fromage (busy)> ' : 'fromage> ';
        for (const segment of reply.segments) {
          if (segment.type === 'text') print(`${label}${segment.text}`);
          else {
            await mkdir(options.imageDir, { recursive: true });
            for (const image of segment.images) {
              const file = join(options.imageDir, `${String(++saved).padStart(4, '0')}-${safeName(image.filename)}`);
              await writeFile(file, image.data);
              const score = image.score === undefined ? '' : ` score ${image.score.toFixed(2)}`;
              print(`${label}[image] ${file}${score} (from ${image.source})`);
            }
          }
        }
        prompt();
      },
      async typing() {
        print('(thinking...)');
      },
      async progress(update) {
        if (update.state === 'queued' && update.position !== lastQueued) {
          lastQueued = update.position;
          print(`(waiting: position ${update.position} in the queue, about ${update.etaSeconds} s)`);
        }
      },
    };
  }

  function dispatch(handler: MessageHandler, text: string, intent: Intent, images: ImageInput[]): void {
    const message: IncomingMessage = {
      key: KEY,
      id: `shell-${++counter}`,
      author: { id: 'local', name: 'you' },
      text,
      images,
      intent,
      receivedAt: new Date(),
    };
    const job = handler(message, responder()).finally(() => inFlight.delete(job));
    inFlight.add(job);
  }

  function onLine(handler: MessageHandler, raw: string): void {
    const line = raw.trim();
    const command = /^\/(\w+)\s*(.*)$/s.exec(line);
    if (!command) {
      const images = pending;
      pending = [];
      dispatch(handler, line, { kind: 'chat' }, images);
      return;
    }
    const [, name, arg] = command;
    switch (name.toLowerCase()) {
      case 'image':
        if (!arg) print('fromage (error)> Usage: /image <path or url>');
        else {
          pending.push(imageInput(arg));
          print(`(attached ${arg}; it goes with your next message)`);
        }
        return prompt();
      case 'retrieve':
        return dispatch(handler, arg, { kind: 'retrieve', query: arg }, []);
      case 'reset':
        pending = [];
        return dispatch(handler, '', { kind: 'reset' }, []);
      case 'help':
        print(SHELL_HELP);
        return prompt();
      case 'settings': {
        const pairs = Object.fromEntries(
          arg.split(/\s+/).filter(Boolean).map((p) => {
            const [k, v = ''] = p.split('=');
            return [k, v];
          }),
        );
        const parsed = parseSettingsChanges(pairs);
        if (!parsed.ok) {
          print(`fromage (error)> ${parsed.message}`);
          return prompt();
        }
        return dispatch(handler, '', { kind: 'settings', changes: parsed.changes }, []);
      }
      case 'quit':
      case 'exit':
        rl?.close();
        return;
      default:
        print(`fromage (error)> Unknown command /${name}. Type /help to see the commands.`);
        return prompt();
    }
  }

  return {
    platform: 'shell',
    async start(handler) {
      rl = createInterface({ input: options.input, terminal: false, crlfDelay: Infinity });
      rl.on('line', (line) => onLine(handler, line));
      rl.on('close', () => {
        void Promise.allSettled([...inFlight]).then(() => options.onExit?.());
      });
      print('FROMAGe is ready. Type /help for commands.');
      prompt();
    },
    async stop() {
      rl?.close();
      await Promise.allSettled([...inFlight]);
    },
  };
}

function safeName(name: string): string {
  return basename(name).replace(/[^\w.-]+/g, '_').slice(0, 80) || 'image';
}

/** A local file or an http(s) URL, read lazily and never beyond `maxBytes`. */
export function imageInput(source: string): ImageInput {
  const isUrl = /^https?:\/\//i.test(source);
  let name = basename(source) || 'image';
  if (isUrl) {
    try {
      name = basename(new URL(source).pathname) || 'image';
    } catch {
      // Reported when the image is fetched, like any other unusable attachment.
    }
  }
  return {
    name,
    async fetch(maxBytes) {
      return isUrl ? fetchUrl(source, name, maxBytes) : readFileLimited(resolve(source), name, maxBytes);
    },
  };
}

async function readFileLimited(path: string, name: string, maxBytes: number): Promise<Buffer> {
  let info;
  try {
    info = await stat(path);
  } catch {
    throw new ImageInputError(`there is no file at ${path}.`, 'unreachable');
  }
  if (!info.isFile()) throw new ImageInputError(`${path} is not a regular file.`, 'unreachable');
  if (info.size > maxBytes) throw new ImageInputError(`${name} is ${mib(info.size)}; the limit is ${mib(maxBytes)}.`, 'too-large');
  return readLimited(createReadStream(path), name, maxBytes, `reading ${path}`);
}

async function fetchUrl(url: string, name: string, maxBytes: number): Promise<Buffer> {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(URL_FETCH_TIMEOUT_MS), redirect: 'follow' });
  } catch (err) {
    throw new ImageInputError(`could not download ${url} (${(err as Error).message}).`, 'unreachable');
  }
  if (!res.ok || !res.body) throw new ImageInputError(`downloading ${url} failed with HTTP ${res.status}.`, 'unreachable');
  const declared = Number(res.headers.get('content-length') ?? 0);
  if (declared > maxBytes) throw new ImageInputError(`${name} is ${mib(declared)}; the limit is ${mib(maxBytes)}.`, 'too-large');
  return readLimited(res.body, name, maxBytes, `downloading ${url}`);
}

/** Reads a stream, counting bytes as they come: a file may grow, a server may lie about its size. */
async function readLimited(body: AsyncIterable<Uint8Array>, name: string, maxBytes: number, what: string): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for await (const chunk of body) {
      total += chunk.byteLength;
      if (total > maxBytes) throw new ImageInputError(`${name} is larger than ${mib(maxBytes)}.`, 'too-large');
      chunks.push(chunk);
    }
  } catch (err) {
    if (err instanceof ImageInputError) throw err;
    throw new ImageInputError(`${what} failed (${(err as Error).message}).`, 'unreachable');
  }
  return Buffer.concat(chunks);
}

function mib(n: number): string {
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}
