import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/log.ts';
import type { ReplyImage } from '../../src/conversation/types.ts';
import { slackMode } from '../../adapters/slack/bolt-app.ts';
import { RecentKeys } from '../../adapters/slack/dedupe.ts';
import { tokenOrigins } from '../../adapters/slack/file-download.ts';
import { checkBeforeDownload } from '../../adapters/slack/images.ts';
import { intentFromMention, parseSlashText } from '../../adapters/slack/intents.ts';
import { escapeMrkdwn, plainTextFromSlack, renderTextMessages } from '../../adapters/slack/mrkdwn.ts';
import { SlackResponder, progressText } from '../../adapters/slack/responder.ts';
import { StatusMessage } from '../../adapters/slack/status-message.ts';
import type { Destination, SlackApi } from '../../adapters/slack/web-api.ts';
import { replyImage } from './harness.ts';

const silent = createLogger({ LOG_LEVEL: 'silent' });

/** Records Web API calls in order, with their time. */
function recordingApi(): SlackApi & { log: string[]; times: Array<{ op: string; at: number }> } {
  let n = 0;
  const log: string[] = [];
  const times: Array<{ op: string; at: number }> = [];
  const note = (op: string) => {
    log.push(op);
    times.push({ op, at: Date.now() });
  };
  return {
    log,
    times,
    async post(_to: Destination, text: string) {
      note(`post ${text}`);
      return `ts${++n}`;
    },
    async update(_c: string, ts: string, text: string) {
      note(`update ${ts} ${text}`);
    },
    async remove(_c: string, ts: string) {
      note(`delete ${ts}`);
    },
    async upload(_to: Destination, images: readonly ReplyImage[]) {
      note(`upload ${images.map((i) => i.filename).join(',')}`);
    },
    async fileInfo() {
      throw new Error('unused');
    },
  };
}

describe('mrkdwn', () => {
  it('escapes only & < >', () => {
    expect(escapeMrkdwn('a & b <c> *d* _e_')).toBe('a &amp; b &lt;c&gt; *d* _e_');
  });

  it('splits long text under the limit, even when escaping lengthens it', () => {
    const text = `${'word '.repeat(2000)}\n\n${'&'.repeat(3000)}`;
    const parts = renderTextMessages(text);
    expect(parts.length).toBeGreaterThan(2);
    for (const p of parts) expect(p.length).toBeLessThanOrEqual(4000);
    expect(parts.join('')).not.toMatch(/&(?!amp;)/);
  });

  it('reads user text: strips the bot mention, resolves mentions, links and escapes', () => {
    expect(plainTextFromSlack('<@UBOT> is <@U2|ada> in <#C1|general>? see <https://a.b|this> &amp; &lt;3', 'UBOT')).toBe(
      'is @ada in #general? see this (https://a.b) & <3',
    );
  });
});

describe('commands', () => {
  it('parses /fromage subcommands', () => {
    expect(parseSlashText('/fromage', 'retrieve  a dog  on a beach ')).toEqual({ ok: true, intent: { kind: 'retrieve', query: 'a dog  on a beach' }, text: 'a dog  on a beach' });
    expect(parseSlashText('/fromage', 'RESET')).toMatchObject({ ok: true, intent: { kind: 'reset' } });
    expect(parseSlashText('/fromage', '')).toMatchObject({ ok: true, intent: { kind: 'help' } });
    expect(parseSlashText('/fromage', 'retrieve')).toMatchObject({ ok: false });
    expect(parseSlashText('/fromage', 'paint a cat')).toMatchObject({ ok: false, message: expect.stringContaining('/fromage retrieve <text>') });
  });

  it('reads command words in mentions, chat otherwise', () => {
    expect(intentFromMention('reset')).toEqual({ intent: { kind: 'reset' }, text: '' });
    expect(intentFromMention('retrieve a cat')).toEqual({ intent: { kind: 'retrieve', query: 'a cat' }, text: 'a cat' });
    expect(intentFromMention('reset the router?')).toEqual({ intent: { kind: 'chat' }, text: 'reset the router?' });
  });
});

describe('dedupe', () => {
  it('remembers keys for the TTL only, and stays bounded', () => {
    let now = 0;
    const keys = new RecentKeys(1000, 3, () => now);
    expect(keys.firstSighting('a')).toBe(true);
    expect(keys.firstSighting('a')).toBe(false);
    now = 1500;
    expect(keys.firstSighting('a')).toBe(true);
    for (const k of ['b', 'c', 'd', 'e']) keys.firstSighting(k);
    expect(keys.firstSighting('a')).toBe(true);
  });
});

describe('modes and hosts', () => {
  it('uses Socket Mode when an app token is set, HTTP mode otherwise', () => {
    const socket = loadConfig({ SLACK_BOT_TOKEN: 'xoxb-1', SLACK_APP_TOKEN: 'xapp-1', SLACK_SIGNING_SECRET: 's' });
    expect(slackMode(socket).kind).toBe('socket');
    const http = loadConfig({ SLACK_BOT_TOKEN: 'xoxb-1', SLACK_SIGNING_SECRET: 's', SLACK_PORT: '3000' });
    expect(slackMode(http)).toEqual({ kind: 'http', signingSecret: 's', port: 3000 });
  });

  it('lets only Slack file hosts and the configured API origin receive the token', () => {
    expect([...tokenOrigins('https://slack.com/api/')]).toEqual(['https://files.slack.com', 'https://slack.com']);
    expect(tokenOrigins('http://127.0.0.1:4000/api/').has('http://127.0.0.1:4001')).toBe(false);
  });

  it('checks type and size before downloading', () => {
    expect(() => checkBeforeDownload({ id: 'F1', name: 'a.mp4', mimetype: 'video/mp4', size: 10 }, 100)).toThrow('not an image (video/mp4)');
    expect(() => checkBeforeDownload({ id: 'F1', name: 'a.png', mimetype: 'image/png', size: 2 * 1024 * 1024 }, 1024 * 1024)).toThrow('is 2 MB, over the 1 MB limit');
    expect(() => checkBeforeDownload({ id: 'F1', name: 'doc', mode: 'external', mimetype: 'image/png' }, 100)).toThrow('outside Slack');
    expect(() => checkBeforeDownload({ id: 'F1', name: 'a.png', filetype: 'png', size: 10 }, 100)).not.toThrow();
  });
});

describe('status message', () => {
  it('edits at most once per interval, sending only the latest text', async () => {
    const api = recordingApi();
    const status = new StatusMessage(api, { channel: 'C' }, () => undefined, 150);
    await status.show('one');
    await status.show('two');
    await status.show('three');
    expect(api.log).toEqual(['post one']);
    await new Promise((r) => setTimeout(r, 250));
    expect(api.log).toEqual(['post one', 'update ts1 three']);
    expect(api.times[1].at - api.times[0].at).toBeGreaterThanOrEqual(140);
    await status.show('four');
    expect(await status.close()).toBe('ts1');
    await new Promise((r) => setTimeout(r, 200));
    expect(api.log).toEqual(['post one', 'update ts1 three']);
  });

  it('shows queue position and ETA', () => {
    expect(progressText({ state: 'queued', position: 3, etaSeconds: 41.6 })).toContain('position 3, about 42 s');
    expect(progressText({ state: 'queued', position: 3 })).toBe(':hourglass_flowing_sand: Queued: position 3.');
  });
});

describe('responder', () => {
  it('deletes the status message when the answer starts with images, and keeps model order', async () => {
    const api = recordingApi();
    const responder = new SlackResponder(api, { channel: 'C', threadTs: '1.1' }, { logger: silent });
    await responder.progress({ state: 'running' });
    await responder.send({
      kind: 'answer',
      segments: [
        { type: 'images', images: [replyImage('a.png')] },
        { type: 'text', text: 'middle' },
        { type: 'images', images: [replyImage('b.png'), replyImage('c.png')] },
      ],
    });
    expect(api.log).toEqual(['post :thought_balloon: Thinking…', 'delete ts1', 'upload a.png', 'post middle', 'upload b.png,c.png']);
  });

  it('sends an error with a warning sign, and later progress is ignored', async () => {
    const api = recordingApi();
    const responder = new SlackResponder(api, { channel: 'C' }, { logger: silent });
    await responder.send({ kind: 'error', segments: [{ type: 'text', text: 'bad <input>' }] });
    await responder.progress({ state: 'running' });
    expect(api.log).toEqual(['post :warning: bad &lt;input&gt;']);
  });

  it('slash commands: notices go privately and the status message is removed', async () => {
    const api = recordingApi();
    const privately: string[] = [];
    const responder = new SlackResponder(api, { channel: 'C' }, { logger: silent, ephemeral: async (t) => void privately.push(t) });
    await responder.typing();
    await responder.send({ kind: 'busy', segments: [{ type: 'text', text: 'Busy, try again in ~30 s' }] });
    expect(api.log).toEqual(['post :thought_balloon: Thinking…', 'delete ts1']);
    expect(privately).toEqual([':hourglass: Busy, try again in ~30 s']);
  });
});

describe('issue 11: Slack settings and control characters', () => {
  it('parses settings, settings reset and bad settings, from the slash command and from a mention', () => {
    expect(parseSlashText('/fromage', 'settings reset')).toEqual({ ok: true, intent: { kind: 'settings', changes: {}, reset: true }, text: '' });
    expect(parseSlashText('/fromage', 'settings words=48 temperature=0.5')).toEqual({ ok: true, intent: { kind: 'settings', changes: { maxWords: 48, temperature: 0.5 } }, text: '' });
    expect(parseSlashText('/fromage', 'settings')).toEqual({ ok: true, intent: { kind: 'settings', changes: {} }, text: '' });
    expect(parseSlashText('/fromage', 'settings words=9999')).toMatchObject({ ok: false, message: expect.stringMatching(/Setting words/) });
    expect(intentFromMention('settings reset')).toEqual({ intent: { kind: 'settings', changes: {}, reset: true }, text: '' });
    expect(intentFromMention('settings of this photo look odd')).toEqual({ intent: { kind: 'chat' }, text: 'settings of this photo look odd' });
  });

  it('shows streamed model text in the status message as text: escaped, controls visible', () => {
    expect(progressText({ state: 'running', text: 'hey <!channel> \u001b[5m' })).toBe(':thought_balloon: hey &lt;!channel&gt; ␛[5m');
  });

  it('shows control characters in posted text instead of passing them on', () => {
    expect(renderTextMessages('a \u001b[2J b \u202e c')).toEqual(['a ␛[2J b &lt;U+202E&gt; c']);
  });
});
