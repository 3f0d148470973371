/**
 * The web chat as `fromage serve` runs it (service, history, scheduler, handler) on a loopback
 * port, around any Engine: the deterministic doubles below, or the real engine on the fixtures.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import sharp from 'sharp';
import { createWebAdapter, type WebAdapter } from '../../adapters/web/index.ts';
import { loadConfig } from '../../src/config.ts';
import { SqliteHistoryStore } from '../../src/conversation/history.ts';
import type { ReplyImage, Segment } from '../../src/conversation/types.ts';
import type { ChatResult, Engine, GenerationSettings, PromptItem, RunOptions } from '../../src/model/engine-api.ts';
import { startService, type RunningService } from '../../src/service/service.ts';

export interface WebChat {
  readonly url: string;
  readonly adapter: WebAdapter;
  readonly service: RunningService;
  readonly history: SqliteHistoryStore;
  readonly dataDir: string;
  /** Stops the service (and the adapter); `keepData` leaves the files for a restart. */
  close(keepData?: boolean): Promise<void>;
}

export interface WebChatOptions {
  readonly engine: Engine;
  readonly token?: string;
  readonly host?: string;
  /** Reuse the data of an earlier run (a restart). */
  readonly dataDir?: string;
  readonly maxImagesPerMessage?: number;
  readonly maxImageBytes?: number;
  readonly env?: Record<string, string>;
}

export async function startWebChat(options: WebChatOptions): Promise<WebChat> {
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), 'fromage-web-')));
  // Generous rate limits: a browser test sends many messages from one address in seconds.
  const config = loadConfig({ FROMAGE_DATA_DIR: dataDir, FROMAGE_USER_RATE: '1000', FROMAGE_USER_BURST: '1000', ...options.env });
  const history = new SqliteHistoryStore(join(dataDir, 'history.sqlite'), { maxTurns: 50 });
  const adapter = createWebAdapter({
    host: options.host ?? '127.0.0.1',
    port: 0,
    token: options.token,
    storePath: join(dataDir, 'web.sqlite'),
    maxImagesPerMessage: options.maxImagesPerMessage ?? 4,
    maxImageBytes: options.maxImageBytes ?? 2 * 1024 * 1024,
    history,
  });
  const service = await startService({ config, logger: pino({ level: 'silent' }), engine: options.engine, adapters: [adapter], history, shutdownGraceMs: 2_000 });
  return {
    url: adapter.url!,
    adapter,
    service,
    history,
    dataDir,
    async close(keepData = false) {
      await service.stop();
      if (!keepData) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export async function pngImage(width: number, height: number, rgb: [number, number, number] = [40, 120, 200]): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } }).png().toBuffer();
}

/** What a scripted answer is made of; `stream` is shown piece by piece before the reply. */
export interface Script {
  readonly segments: readonly Segment[];
  readonly stream?: readonly string[];
}

/**
 * A deterministic Engine double: answers each question from `script` (by its text), else echoes
 * it; streams partial text through onText with `stepMs` between pieces, so a page sees it grow.
 */
export class ScriptedEngine implements Engine {
  readonly info = { bundleId: 'scripted', contextLength: 2048, nVisualTokens: 1, hasIndex: true };
  readonly prompts: (readonly PromptItem[])[] = [];
  private gate: Promise<void> = Promise.resolve();

  constructor(
    private readonly script: (question: string, images: number) => Script | undefined | Promise<Script | undefined>,
    private readonly stepMs = 40,
  ) {}

  /** Holds every job until the returned function is called (to see queue positions). */
  hold(): () => void {
    let release!: () => void;
    this.gate = new Promise((r) => (release = r));
    return () => {
      this.gate = Promise.resolve();
      release();
    };
  }

  async countTokens(text: string): Promise<number> {
    return Math.ceil(text.length / 4);
  }

  async chat(prompt: readonly PromptItem[], _settings: GenerationSettings, options: RunOptions = {}): Promise<ChatResult> {
    this.prompts.push(prompt);
    await this.gate;
    const texts = prompt.filter((p) => p.type === 'text').map((p) => (p.type === 'text' ? p.text : ''));
    const question = /Q: ([\s\S]*)\nA:$/.exec(texts[texts.length - 1] ?? '')?.[1] ?? '';
    const images = prompt.filter((p) => p.type === 'image').length;
    const planned = (await this.script(question, images)) ?? { segments: [{ type: 'text', text: `You said: ${question} (${images} image(s) so far)` }] };
    for (const piece of planned.stream ?? []) {
      options.onText?.(piece);
      await new Promise((r) => setTimeout(r, this.stepMs));
    }
    return { segments: planned.segments, generatedTokens: 8 };
  }

  async retrieve(query: string, count: number): Promise<readonly ReplyImage[]> {
    await this.gate;
    return Promise.all(Array.from({ length: count }, async (_, i) => replyImage(`${query.replace(/\W+/g, '_')}-${i}.png`, `https://images.example/${i}.png`, 9.5 - i)));
  }

  async close(): Promise<void> {}
}

export async function replyImage(filename: string, source: string, score: number, size = 64): Promise<ReplyImage> {
  return { data: await pngImage(size, size, [200, 60, 40]), contentType: 'image/png', filename, source, score, width: size, height: size };
}
