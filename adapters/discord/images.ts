/**
 * Image inputs from Discord attachments: checked against the limits before any byte is
 * fetched, then downloaded right away (attachment CDN URLs are signed and expire, so the
 * service cannot fetch them later when the job leaves the queue).
 */
import { ImageInputError, type ImageInput } from '../../src/conversation/types.ts';

/** What Discord tells us about an attachment (or an embed image through Discord's proxy). */
export interface AttachmentInfo {
  readonly name: string;
  readonly url: string;
  readonly contentType?: string | null;
  /** Unknown for embed images. */
  readonly size?: number | null;
  /** Discord already recognised it as an image (an image embed), whatever its name says. */
  readonly embedded?: boolean;
}

export interface ImageLimits {
  readonly maxBytes: number;
  readonly maxCount: number;
  readonly timeoutMs: number;
}

export interface CollectedImages {
  readonly images: ImageInput[];
  /** One sentence per skipped or capped input, for the user. */
  readonly notes: string[];
}

const IMAGE_EXTENSIONS = /\.(png|jpe?g|webp|gif)$/i;

export function looksLikeImage(info: AttachmentInfo): boolean {
  if (info.embedded) return true;
  if (info.contentType) return info.contentType.toLowerCase().startsWith('image/');
  return IMAGE_EXTENSIONS.test(info.name);
}

export function formatBytes(n: number): string {
  if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} bytes`;
}

/** Checks, caps and downloads; never throws for a bad input, it becomes a note instead. */
export async function collectImages(candidates: readonly AttachmentInfo[], limits: ImageLimits): Promise<CollectedImages> {
  const notes: string[] = [];
  const eligible: AttachmentInfo[] = [];
  for (const c of candidates) {
    if (!looksLikeImage(c)) {
      notes.push(`Skipped ${c.name}: it is not an image (${c.contentType ?? 'unknown type'}). Attach PNG, JPEG, WebP or GIF images.`);
    } else if (c.size != null && c.size > limits.maxBytes) {
      notes.push(`Skipped ${c.name}: it is ${formatBytes(c.size)}, over the ${formatBytes(limits.maxBytes)} limit per image. Send a smaller image.`);
    } else {
      eligible.push(c);
    }
  }
  if (eligible.length > limits.maxCount) {
    notes.push(`You sent ${eligible.length} images; I read only the first ${limits.maxCount} (the limit per message).`);
    eligible.length = limits.maxCount;
  }
  const results = await Promise.allSettled(eligible.map((c) => downloadLimited(c.url, limits.maxBytes, limits.timeoutMs)));
  const images: ImageInput[] = [];
  results.forEach((r, i) => {
    const c = eligible[i];
    if (r.status === 'fulfilled') images.push(bufferedImage(c, r.value));
    else notes.push(`Skipped ${c.name}: ${r.reason instanceof ImageInputError ? r.reason.message : 'the download failed'}.`);
  });
  return { images, notes };
}

/** An `ImageInput` over bytes already in memory. */
export function bufferedImage(info: Pick<AttachmentInfo, 'name' | 'contentType'>, data: Buffer): ImageInput {
  return {
    name: info.name,
    contentType: info.contentType ?? undefined,
    size: data.length,
    fetch: async (maxBytes: number) => {
      if (data.length > maxBytes)
        throw new ImageInputError(`${info.name} is ${formatBytes(data.length)}, over the ${formatBytes(maxBytes)} limit`, 'too-large');
      return data;
    },
  };
}

/** GET with a deadline and a byte cap enforced while streaming (the declared size may lie). */
export async function downloadLimited(url: string, maxBytes: number, timeoutMs: number): Promise<Buffer> {
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), redirect: 'follow' });
  } catch (err) {
    const timedOut = err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError');
    throw new ImageInputError(timedOut ? `the download took longer than ${Math.round(timeoutMs / 1000)} s` : 'the download failed', 'unreachable');
  }
  if (!response.ok || !response.body) {
    await response.body?.cancel().catch(() => undefined);
    throw new ImageInputError(`the download failed (HTTP ${response.status}); the attachment may have been deleted`, 'unreachable');
  }
  const declared = Number(response.headers.get('content-length') ?? NaN);
  if (Number.isFinite(declared) && declared > maxBytes) {
    await response.body.cancel().catch(() => undefined);
    throw new ImageInputError(`it is ${formatBytes(declared)}, over the ${formatBytes(maxBytes)} limit per image`, 'too-large');
  }
  const chunks: Buffer[] = [];
  let total = 0;
  const reader = response.body.getReader();
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > maxBytes) {
        await reader.cancel().catch(() => undefined);
        throw new ImageInputError(`it is over the ${formatBytes(maxBytes)} limit per image`, 'too-large');
      }
      chunks.push(Buffer.from(value));
    }
  } catch (err) {
    if (err instanceof ImageInputError) throw err;
    throw new ImageInputError('the download was interrupted', 'unreachable');
  }
  return Buffer.concat(chunks);
}
