/**
 * Slack file objects as `ImageInput`s. Everything Slack tells us up front (type, size,
 * hosting) is checked before a byte is downloaded, so a PDF or a 200 MB video costs nothing
 * and the user hears exactly why it was not used.
 */
import { ImageInputError, type ImageInput } from '../../src/conversation/types.ts';
import { downloadSlackFile, formatBytes } from './file-download.ts';
import type { SlackFile } from './payloads.ts';

export interface SlackImageDeps {
  readonly token: string;
  readonly allowedOrigins: ReadonlySet<string>;
  /** FROMAGE_MAX_IMAGE_BYTES: the ceiling whatever the caller asks for. */
  readonly maxImageBytes: number;
  /** files.info, for files Slack delivers before it has finished processing them. */
  readonly fileInfo: (id: string) => Promise<SlackFile>;
}

const IMAGE_FILETYPES = new Set(['png', 'jpg', 'jpeg', 'webp', 'gif', 'bmp', 'tiff', 'heic', 'avif']);

function displayName(file: SlackFile): string {
  return file.name || file.title || file.id;
}

function isImage(file: SlackFile): boolean {
  if (file.mimetype) return file.mimetype.toLowerCase().startsWith('image/');
  return IMAGE_FILETYPES.has((file.filetype ?? '').toLowerCase());
}

/** Throws the user-facing reason a file cannot be used, without downloading it. */
export function checkBeforeDownload(file: SlackFile, maxBytes: number): void {
  const name = displayName(file);
  if (file.mode === 'tombstone') throw new ImageInputError(`${name} was deleted before I could read it.`, 'unreachable');
  if (file.mode === 'external')
    throw new ImageInputError(`${name} is a link to a file stored outside Slack. Upload the image to Slack itself.`, 'unreachable');
  if (!isImage(file)) {
    const kind = file.mimetype || file.filetype || 'unknown type';
    throw new ImageInputError(`${name} is not an image (${kind}). Attach a PNG, JPEG or WebP image.`, 'not-an-image');
  }
  if (typeof file.size === 'number' && file.size > maxBytes)
    throw new ImageInputError(
      `${name} is ${formatBytes(file.size)}, over the ${formatBytes(maxBytes)} limit. Send a smaller image.`,
      'too-large',
    );
}

export function slackImageInput(file: SlackFile, deps: SlackImageDeps): ImageInput {
  return {
    name: displayName(file),
    contentType: file.mimetype ?? undefined,
    size: file.size ?? undefined,
    async fetch(maxBytes: number): Promise<Buffer> {
      const limit = Math.min(maxBytes, deps.maxImageBytes);
      // Reject by the event's own metadata first, so a PDF never costs a files.info call.
      if (file.mimetype || file.filetype) checkBeforeDownload(file, limit);
      let current = file;
      if (current.file_access === 'check_file_info' || !(current.url_private_download || current.url_private)) {
        try {
          current = await deps.fileInfo(file.id);
        } catch (_err) {
          throw new ImageInputError(`Slack would not tell me where ${displayName(file)} is stored. Try uploading it again.`, 'unreachable');
        }
      }
      checkBeforeDownload(current, limit);
      const url = current.url_private_download || current.url_private;
      if (!url) throw new ImageInputError(`Slack gave no download link for ${displayName(current)}.`, 'unreachable');
      return downloadSlackFile(url, {
        token: deps.token,
        allowedOrigins: deps.allowedOrigins,
        maxBytes: limit,
        fileName: displayName(current),
      });
    },
  };
}
