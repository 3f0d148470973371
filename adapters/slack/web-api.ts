/**
 * The few Web API calls the adapter makes, behind a small interface so replies and progress
 * can be tested without HTTP and the rest of the adapter never touches WebClient's wide types.
 */
// Through Bolt's re-export: @slack/web-api is Bolt's dependency, not ours.
import { webApi as slackWebApi } from '@slack/bolt';
import type { ReplyImage } from '../../src/conversation/types.ts';
import { filesInfoResponseSchema, type SlackFile } from './payloads.ts';

/** Where a reply goes: a channel or DM, and the thread inside it when there is one. */
export interface Destination {
  readonly channel: string;
  readonly threadTs?: string;
}

export interface SlackApi {
  /** Returns the new message's ts. */
  post(to: Destination, text: string): Promise<string>;
  update(channel: string, ts: string, text: string): Promise<void>;
  remove(channel: string, ts: string): Promise<void>;
  /** One files.uploadV2 call: the images appear together, in the given order. */
  upload(to: Destination, images: readonly ReplyImage[]): Promise<void>;
  fileInfo(id: string): Promise<SlackFile>;
}

/** Production retries: a few quick ones; the default (ten over half an hour) outlives the user's patience. */
export type WebClient = slackWebApi.WebClient;
export type WebClientOptions = slackWebApi.WebClientOptions;

export function webClientOptions(slackApiUrl: string, overrides: WebClientOptions = {}): WebClientOptions {
  // WebClient appends method names directly, so the base must end with a slash.
  const base = slackApiUrl.endsWith('/') ? slackApiUrl : `${slackApiUrl}/`;
  return { slackApiUrl: base, retryConfig: slackWebApi.retryPolicies.fiveRetriesInFiveMinutes, ...overrides };
}

const ALT_TEXT_LIMIT = 1000;

function altText(image: ReplyImage): string {
  const scored = image.score === undefined ? '' : ` (score ${image.score.toFixed(2)})`;
  return `Image retrieved from ${image.source}${scored}`.slice(0, ALT_TEXT_LIMIT);
}

export function createWebClient(token: string, options: WebClientOptions): WebClient {
  return new slackWebApi.WebClient(token, options);
}

/**
 * Lone UTF-16 surrogates (a user can type one; the answer may repeat it) replaced by U+FFFD: the
 * Web API client form-encodes its arguments, and encodeURIComponent throws on them, so the whole
 * answer failed to post.
 */
export function wellFormed(text: string): string {
  return text.replace(/\p{Cs}/gu, '\uFFFD');
}

export function webApi(client: WebClient): SlackApi {
  return {
    async post(to, text) {
      const res = await client.chat.postMessage({ channel: to.channel, thread_ts: to.threadTs, text: wellFormed(text), unfurl_links: false, unfurl_media: false });
      if (!res.ts) throw new Error('chat.postMessage returned no ts');
      return res.ts;
    },
    async update(channel, ts, text) {
      await client.chat.update({ channel, ts, text: wellFormed(text) });
    },
    async remove(channel, ts) {
      await client.chat.delete({ channel, ts });
    },
    async upload(to, images) {
      const file_uploads = images.map((image) => ({ file: image.data, filename: wellFormed(image.filename), title: wellFormed(image.filename), alt_text: wellFormed(altText(image)) }));
      if (to.threadTs) await client.filesUploadV2({ channel_id: to.channel, thread_ts: to.threadTs, file_uploads });
      else await client.filesUploadV2({ channel_id: to.channel, file_uploads });
    },
    async fileInfo(id) {
      const res = await client.files.info({ file: id });
      return filesInfoResponseSchema.parse(res).file;
    },
  };
}

/** The Slack error code of a failed Web API call (`not_in_channel`, `invalid_auth`...), if any. */
export function slackErrorCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'data' in err) {
    const data = (err as { data?: { error?: unknown } }).data;
    if (typeof data?.error === 'string') return data.error;
  }
  return undefined;
}
