/**
 * A deterministic Engine double for the service tests: no model, no ORT. It answers with the
 * last question reversed-free ("I see N image(s). You said: ..."), and with an image segment
 * when the question contains "show". Tokens are counted as characters / 4 (rounded up).
 */
import sharp from 'sharp';
import type { ChatResult, Engine, GenerationSettings, PromptItem, RunOptions } from '../../src/model/engine-api.ts';
import { EngineInputError } from '../../src/model/engine-api.ts';
import type { ReplyImage, Segment } from '../../src/conversation/types.ts';

export interface FakeEngineOptions {
  contextLength?: number;
  nVisualTokens?: number;
  hasIndex?: boolean;
  /** Time each job takes, honouring the abort signal. */
  delayMs?: number;
}

export class FakeEngine implements Engine {
  readonly info;
  readonly calls: { prompt: readonly PromptItem[]; settings: GenerationSettings }[] = [];
  closed = false;

  constructor(private readonly options: FakeEngineOptions = {}) {
    this.info = {
      bundleId: 'fake-bundle',
      contextLength: options.contextLength ?? 2048,
      nVisualTokens: options.nVisualTokens ?? 1,
      hasIndex: options.hasIndex ?? true,
    };
  }

  async countTokens(text: string): Promise<number> {
    return Math.ceil(text.length / 4);
  }

  async chat(prompt: readonly PromptItem[], settings: GenerationSettings, options: RunOptions = {}): Promise<ChatResult> {
    this.calls.push({ prompt, settings });
    await this.wait(options.signal);
    const texts = prompt.filter((p) => p.type === 'text').map((p) => (p.type === 'text' ? p.text : ''));
    const question = /Q: ([\s\S]*)\nA:$/.exec(texts[texts.length - 1] ?? '')?.[1] ?? '';
    const images = prompt.filter((p) => p.type === 'image').length;
    const answer = `I see ${images} image(s). You said: ${question}`;
    options.onText?.(answer);
    const segments: Segment[] = [{ type: 'text', text: answer }];
    if (/show/i.test(question)) segments.push({ type: 'images', images: [await fakeImage('retrieved.png', 0.5)] });
    return { segments, generatedTokens: Math.ceil(answer.length / 4) };
  }

  async retrieve(query: string, count: number, options: RunOptions = {}): Promise<readonly ReplyImage[]> {
    if (!this.info.hasIndex) throw new EngineInputError('No retrieval index is configured.');
    await this.wait(options.signal);
    return Promise.all(Array.from({ length: count }, (_, i) => fakeImage(`${query.replace(/\W+/g, '_')}-${i}.png`, 1 - i * 0.1)));
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private wait(signal?: AbortSignal): Promise<void> {
    const ms = this.options.delayMs ?? 0;
    if (ms === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(resolve, ms);
      signal?.addEventListener('abort', () => {
        clearTimeout(t);
        reject(signal.reason as Error);
      });
    });
  }
}

export async function fakeImage(filename: string, score: number): Promise<ReplyImage> {
  const data = await sharp({ create: { width: 8, height: 8, channels: 3, background: { r: 200, g: 30, b: 30 } } }).png().toBuffer();
  return { data, contentType: 'image/png', filename, source: `http://127.0.0.1/${filename}`, score, width: 8, height: 8 };
}
