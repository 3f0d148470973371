/**
 * The embedded default: a chat in the terminal (like Hubot's shell adapter). Lines are
 * messages; slash commands attach images and reach the same intents as Discord and Slack.
 * Retrieved images are saved into a folder and their paths printed. Nothing printed can act on
 * the terminal: control characters from the model, captions, URLs or names are shown, not sent.
 */
import { createReadStream } from 'node:fs';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import sharp from 'sharp';
import { MAX_INPUT_PIXELS } from '../../src/conversation/images.ts';
import { parseSettingsChanges } from '../../src/conversation/settings.ts';
import { showControlCharacters } from '../../src/conversation/text.ts';
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
  /** For saved image names (tests). */
  readonly now?: () => Date;
}

export interface ShellAdapter extends Adapter {
  /** Prints a line for the person at the terminal (a log warning), above the prompt when one is shown. */
  notice(line: string): void;
}

const KEY: ConversationKey = { platform: 'shell', workspace: 'local', channel: 'terminal' };
const URL_FETCH_TIMEOUT_MS = 20_000;

export const SHELL_HELP = [
  'Type a message and press Enter. Commands:',
  '  /image <path or url>  attach an image to your next message',
  '  /retrieve <text>      find images for a description',
  '  /reset                forget this conversation',
  '  /settings [k=v ...]   show or change ret_scale, max_images, words, temperature',
  '  /settings reset       restore the default settings',
  '  /help                 this help',
  '  /quit                 leave',
].join('\n');

export function createShellAdapter(options: ShellOptions): ShellAdapter {
  let rl: Interface | undefined;
  let pending: ImageInput[] = [];
  let counter = 0;
  const inFlight = new Set<Promise<void>>();
  /** Lines are handled one after another: an /image check finishes before the next line is read. */
  let lines: Promise<void> = Promise.resolve();
  let promptShown = false;
  const saveImage = imageSaver(options.imageDir, (options.now ?? (() => new Date()))());
  const PROMPT = 'you> ';
  /** Everything printed goes through here, made harmless; a shown prompt is redrawn below it. */
  const print = (line: string) => {
    const safe = showControlCharacters(line);
    if (promptShown && options.interactive) options.output.write(`\r\u001b[K${safe}\n${PROMPT}`);
    else options.output.write(`${safe}\n`);
  };
  const prompt = () => {
    if (options.interactive && !promptShown) {
      options.output.write(PROMPT);
      promptShown = true;
    }
  };

  function responder(): Responder {
    let lastQueued = -1;
    let thinking = false;
    return {
      async send(reply: Reply) {
        const label = reply.kind === 'error' ? 'fromage (error)> ' : reply.kind === 'busy' ? 'fromage (busy)> ' : 'fromage> ';
        for (const segment of reply.segments) {
          if (segment.type === 'text') print(`${label}${segment.text}`);
          else {
            for (const image of segment.images) {
              const file = await saveImage(image.filename, image.data);
              const score = image.score === undefined ? '' : ` score ${image.score.toFixed(2)}`;
              print(`${label}[image] ${file}${score} (from ${image.source})`);
            }
          }
        }
        prompt();
      },
      async typing() {
        if (thinking) return;
        thinking = true;
        print('(thinking...)');
      },
      async progress(update) {
        if (update.state === 'queued' && update.position !== lastQueued) {
          lastQueued = update.position;
          print(`(waiting: position ${update.position} in the queue${update.etaSeconds === undefined ? '' : `, about ${update.etaSeconds} s`})`);
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

  async function onLine(handler: MessageHandler, raw: string): Promise<void> {
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
      case 'image': {
        if (!arg) {
          print('fromage (error)> Usage: /image <path or url>');
          return prompt();
        }
        const problem = await checkAttachment(arg);
        if (problem) print(`fromage (error)> ${problem}`);
        else {
          pending.push(imageInput(arg));
          print(`(attached ${arg}; it goes with your next message)`);
        }
        return prompt();
      }
      case 'retrieve':
        return dispatch(handler, arg, { kind: 'retrieve', query: arg }, []);
      case 'reset':
        pending = [];
        return dispatch(handler, '', { kind: 'reset' }, []);
      case 'help':
        print(SHELL_HELP);
        return prompt();
      case 'settings': {
        if (arg.trim().toLowerCase() === 'reset') return dispatch(handler, '', { kind: 'settings', changes: {}, reset: true }, []);
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
      rl.on('line', (line) => {
        promptShown = false;
        lines = lines.then(() => onLine(handler, line)).catch((err: unknown) => print(`fromage (error)> ${(err as Error).message}`));
      });
      rl.on('close', () => {
        // Piped input ends before its answers: every line is handled and answered first.
        void lines.then(() => Promise.allSettled([...inFlight])).then(() => options.onExit?.());
      });
      print('FROMAGe is ready. Type /help for commands.');
      // After a restart the conversation is still there; the handler says so (nothing when new).
      dispatch(handler, '', { kind: 'welcome' }, []);
      prompt();
    },
    async stop() {
      rl?.close();
      await lines;
      await Promise.allSettled([...inFlight]);
    },
    notice(line) {
      print(line);
    },
  };
}

/**
 * Saves retrieved images under names that never collide: a session stamp and a counter, and a
 * file that exists already (another session in the same second) is never overwritten.
 */
function imageSaver(dir: string, sessionStart: Date): (filename: string, data: Buffer) => Promise<string> {
  const stamp = sessionStart.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  let counter = 0;
  return async (filename, data) => {
    await mkdir(dir, { recursive: true });
    for (;;) {
      const file = join(dir, `${stamp}-${String(++counter).padStart(4, '0')}-${safeName(filename)}`);
      try {
        await writeFile(file, data, { flag: 'wx' });
        return file;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
  };
}

/** `~` and `~/...` as a shell would expand them. */
export function expandHome(path: string): string {
  if (path === '~') return homedir();
  if (path.startsWith('~/')) return join(homedir(), path.slice(2));
  return path;
}

/** Why `/image <source>` cannot work, said when it is attached; undefined when it looks usable. */
export async function checkAttachment(source: string): Promise<string | undefined> {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(source)) {
    let url: URL;
    try {
      url = new URL(source);
    } catch {
      return `${source} is not a valid URL.`;
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return `${source}: only http(s) URLs and local files can be attached.`;
    return undefined;
  }
  const path = resolve(expandHome(source));
  let info;
  try {
    info = await stat(path);
  } catch {
    return `There is no file at ${path}. Check the path (relative paths start from ${process.cwd()}).`;
  }
  if (info.isDirectory()) return `${path} is a folder; attach an image file inside it.`;
  if (!info.isFile()) return `${path} is not a regular file.`;
  try {
    const meta = await sharp(path, { limitInputPixels: MAX_INPUT_PIXELS, pages: 1 }).metadata();
    if (!meta.width || !meta.height) return `${basename(path)} has no size; is it an image?`;
  } catch {
    return `${basename(path)} is not an image I can read; attach a PNG, JPEG, WebP or GIF file.`;
  }
  return undefined;
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
      return isUrl ? fetchUrl(source, name, maxBytes) : readFileLimited(resolve(expandHome(source)), name, maxBytes);
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
