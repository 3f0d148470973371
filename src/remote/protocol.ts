/**
 * What travels through Redis between the gateway and the workers, validated with zod on both
 * sides (a job or an announcement in Redis is untrusted input: anyone who reaches Redis can
 * write one).
 *
 * Travels: the prompt (text and the normalized image bytes, base64, each image at most
 * MAX_IMAGE_BYTES, a job at most MAX_JOB_BYTES), the generation settings, the bundle id the
 * gateway expects, a deadline; back: the answer's segments with retrieved images inlined (base64,
 * at most MAX_REPLY_IMAGES images of MAX_IMAGE_BYTES each), partial text while decoding, and
 * each worker's announcement. Does not travel: model graphs, indexes, KV caches (they stay on
 * the worker that built them, hence affinity), history and settings (they stay in the gateway).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import type { ReplyImage, Segment } from '../conversation/types.ts';
import type { ChatResult, GenerationSettings, PromptItem } from '../model/engine-api.ts';

export const PROTOCOL_VERSION = 1;
export const MAX_IMAGE_BYTES = 16 * 1024 * 1024;
export const MAX_JOB_BYTES = 64 * 1024 * 1024;
export const MAX_REPLY_IMAGES = 16;
const MAX_TEXT = 1_000_000;

const b64 = (maxBytes: number) =>
  z
    .string()
    .max(Math.ceil(maxBytes / 3) * 4)
    .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'not base64');

const promptItem = z.discriminatedUnion('type', [
  z.object({ type: z.literal('text'), text: z.string().max(MAX_TEXT) }),
  z.object({ type: z.literal('image'), hash: z.string().regex(/^[0-9a-f]{64}$/), data: b64(MAX_IMAGE_BYTES) }),
]);

const settings = z.object({
  retScaleFactor: z.number().finite().min(0).max(100),
  maxImages: z.number().int().min(0).max(16),
  maxWords: z.number().int().min(1).max(4096),
  temperature: z.number().finite().min(0).max(10),
  topP: z.number().finite().min(0).max(1).optional(),
  seed: z.number().int().min(0).max(2 ** 31).optional(),
  maxNumRets: z.number().int().min(0).max(16).optional(),
});

const jobBase = {
  v: z.literal(PROTOCOL_VERSION),
  /** The bundle the gateway expects; a worker with another refuses the job. */
  bundleId: z.string().min(1).max(200),
  /** Epoch ms after which nobody waits for the answer any more. */
  deadline: z.number().int().positive(),
};

export const jobSchema = z.discriminatedUnion('kind', [
  z.object({
    ...jobBase,
    kind: z.literal('chat'),
    prompt: z
      .array(promptItem)
      .max(4096)
      .refine((items) => items.reduce((n, p) => n + (p.type === 'text' ? p.text.length : p.data.length), 0) <= MAX_JOB_BYTES, `a job holds at most ${MAX_JOB_BYTES} bytes`),
    settings,
  }),
  z.object({ ...jobBase, kind: z.literal('retrieve'), query: z.string().min(1).max(MAX_TEXT), count: z.number().int().min(1).max(MAX_REPLY_IMAGES) }),
]);
export type JobPayload = z.infer<typeof jobSchema>;

const replyImage = z.object({
  data: b64(MAX_IMAGE_BYTES),
  contentType: z.string().max(200),
  filename: z.string().max(500),
  source: z.string().max(10_000),
  score: z.number().optional(),
  width: z.number().int().optional(),
  height: z.number().int().optional(),
});

const segment = z.discriminatedUnion('type', [
  z.object({ type: z.literal('text'), text: z.string().max(MAX_TEXT) }),
  z.object({ type: z.literal('images'), images: z.array(replyImage).max(MAX_REPLY_IMAGES) }),
]);

export const resultSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('chat'), segments: z.array(segment).max(1000), generatedTokens: z.number().int().min(0), historyText: z.string().max(MAX_TEXT).optional(), worker: z.string().max(200) }),
  z.object({ kind: z.literal('retrieve'), images: z.array(replyImage).max(MAX_REPLY_IMAGES), worker: z.string().max(200) }),
]);
export type JobResult = z.infer<typeof resultSchema>;

/** What a worker writes under its heartbeat key. */
export const announcementSchema = z.object({
  id: z.string().min(1).max(200),
  host: z.string().max(200),
  device: z.string().max(50),
  bundleId: z.string().max(200),
  /** Jobs it runs at once (its engine's batch). */
  capacity: z.number().int().min(1).max(1024),
  running: z.number().int().min(0),
  /** `refusing`: its bundle is not the one the gateway expects (see `reason`). */
  state: z.enum(['ready', 'refusing', 'stopping']),
  reason: z.string().max(1000).optional(),
  tokensPerSecond: z.number().min(0),
  /** Whether it loaded a retrieval index (`/fromage retrieve` and [RET] images need one). */
  hasIndex: z.boolean().optional(),
  jobsDone: z.number().int().min(0),
  startedAt: z.number().int(),
  lastSeen: z.number().int(),
});
export type Announcement = z.infer<typeof announcementSchema>;

/** Worker -> gateway notices on the events channel: partial text, and "look at the job now". */
export const eventSchema = z.discriminatedUnion('t', [
  z.object({ t: z.literal('progress'), job: z.string().max(300), text: z.string().max(MAX_TEXT) }),
  z.object({ t: z.literal('started'), job: z.string().max(300), worker: z.string().max(200), at: z.number() }),
  z.object({ t: z.literal('done'), job: z.string().max(300) }),
]);
export type WorkerEvent = z.infer<typeof eventSchema>;

export function encodePrompt(prompt: readonly PromptItem[]): z.infer<typeof promptItem>[] {
  return prompt.map((p) => (p.type === 'text' ? { type: 'text' as const, text: p.text } : { type: 'image' as const, hash: p.image.hash, data: p.image.data.toString('base64') }));
}

export function decodePrompt(items: readonly z.infer<typeof promptItem>[]): PromptItem[] {
  return items.map((p) => (p.type === 'text' ? p : { type: 'image' as const, image: { hash: p.hash, data: Buffer.from(p.data, 'base64') } }));
}

export function encodeSettings(s: GenerationSettings): z.infer<typeof settings> {
  return {
    retScaleFactor: s.retScaleFactor,
    maxImages: s.maxImages,
    maxWords: s.maxWords,
    temperature: s.temperature,
    ...(s.topP !== undefined ? { topP: s.topP } : {}),
    ...(s.seed !== undefined ? { seed: s.seed } : {}),
    ...(s.maxNumRets !== undefined ? { maxNumRets: s.maxNumRets } : {}),
  };
}

/** Retrieved images larger than the bound are left out of the answer rather than failing it. */
export function encodeImages(images: readonly ReplyImage[]): z.infer<typeof replyImage>[] {
  return images
    .filter((i) => i.data.length <= MAX_IMAGE_BYTES)
    .slice(0, MAX_REPLY_IMAGES)
    .map((i) => ({
      data: i.data.toString('base64'),
      contentType: i.contentType,
      filename: i.filename,
      source: i.source,
      ...(i.score !== undefined ? { score: i.score } : {}),
      ...(i.width !== undefined ? { width: i.width } : {}),
      ...(i.height !== undefined ? { height: i.height } : {}),
    }));
}

export function decodeImages(images: readonly z.infer<typeof replyImage>[]): ReplyImage[] {
  return images.map((i) => ({ ...i, data: Buffer.from(i.data, 'base64') }));
}

export function encodeChatResult(r: ChatResult, worker: string): JobResult {
  return {
    kind: 'chat',
    segments: r.segments.map((s) => (s.type === 'text' ? s : { type: 'images', images: encodeImages(s.images) })),
    generatedTokens: r.generatedTokens,
    ...(r.historyText !== undefined ? { historyText: r.historyText } : {}),
    worker,
  };
}

export function decodeChatResult(r: JobResult & { kind: 'chat' }): ChatResult {
  const segments: Segment[] = r.segments.map((s) => (s.type === 'text' ? s : { type: 'images', images: decodeImages(s.images) }));
  return { segments, generatedTokens: r.generatedTokens, ...(r.historyText !== undefined ? { historyText: r.historyText } : {}) };
}

/**
 * The request's identity: the same prompt and settings for the same bundle give the same key,
 * so a gateway that restarts and is asked again attaches to the job already queued or answered
 * instead of running it twice.
 */
export function requestKey(payload: Omit<JobPayload, 'deadline'>): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ ...payload, deadline: undefined }));
  return h.digest('hex').slice(0, 40);
}

/**
 * Which worker should answer: the one holding this conversation's cache. A conversation's prompt
 * keeps its first turn while it grows, so the first text item and the images before it
 * identify the cached prefix (two conversations opening alike share one, which suits the cache).
 */
export function affinityKey(prompt: readonly PromptItem[]): string {
  const h = createHash('sha256');
  for (const p of prompt) {
    if (p.type === 'image') h.update(`i:${p.image.hash};`);
    else {
      h.update(`t:${p.text}`);
      break;
    }
  }
  return h.digest('hex').slice(0, 32);
}

/** Epoch milliseconds with sub-millisecond precision: a worker's 'started' time is compared with the gateway's enqueue time. */
export const epochMs = (): number => performance.timeOrigin + performance.now();
