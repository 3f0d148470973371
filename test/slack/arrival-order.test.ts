/**
 * Issue 11, bug 1 on Slack: a DM with an image whose download is slow, then two quick text
 * messages. With the real service handler behind the adapter, the answers come back (and the
 * history is kept) in the order the messages were sent.
 */
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { SqliteHistoryStore } from '../../src/conversation/history.ts';
import { Scheduler } from '../../src/queue/scheduler.ts';
import { createMessageHandler } from '../../src/service/handler.ts';
import { FakeEngine } from '../support/fake-engine.ts';
import { FakeSlack } from './fake-slack.ts';
import { eventEnvelope, eventually, postEvent, startHttpAdapter } from './harness.ts';

const fake = new FakeSlack();
beforeAll(() => fake.start());
afterAll(() => fake.stop());

it('keeps arrival order in a DM when an image download is slower than the texts sent after it', async () => {
  const png = readFileSync('test/fixtures/images/alpha.png');
  fake.files.set('/files/F900/landscape.png', { headers: { 'content-type': 'image/png' }, body: png, delayMs: 300 });
  const history = new SqliteHistoryStore(':memory:', { maxTurns: 20 });
  const handler = createMessageHandler({
    engine: new FakeEngine(),
    history,
    scheduler: new Scheduler({ concurrency: 1, maxQueued: 10, userRatePerMinute: 600, userBurst: 100, jobTimeoutMs: 5000 }),
    logger: pino({ level: 'silent' }),
  });
  const adapter = await startHttpAdapter(fake, handler);
  try {
    const dm = (ts: string, text: string, extra: Record<string, unknown> = {}) => ({ type: 'message', channel_type: 'im', channel: 'D9', user: 'U9', text, ts, ...extra });
    const file = { id: 'F900', name: 'landscape.png', mimetype: 'image/png', filetype: 'png', size: png.length, mode: 'hosted', url_private_download: `${fake.base}/files/F900/landscape.png` };
    for (const event of [dm('50.1', 'FIRST with image', { files: [file] }), dm('50.2', 'SECOND'), dm('50.3', 'THIRD')])
      expect((await postEvent(adapter.httpPort ?? 0, eventEnvelope(event))).status).toBe(200);
    await eventually(() => fake.thread('D9').filter((m) => /You said/.test(m.text ?? '')).length === 3);
    await adapter.idle();
    expect(fake.thread('D9').flatMap((m) => /You said: (\w+)/.exec(m.text ?? '')?.[1] ?? [])).toEqual(['FIRST', 'SECOND', 'THIRD']);
    expect(history.turns('slack:dm:D9:-').filter((t) => t.role === 'user').map((t) => t.text)).toEqual(['FIRST with image', 'SECOND', 'THIRD']);
  } finally {
    await adapter.stop();
  }
});
