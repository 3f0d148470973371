/**
 * Mutated events over Slack's Socket Mode (the default way to run the Slack adapter): any JSON
 * object as the event of an event_callback, and valid events with fields dropped or of another type. Property: the
 * adapter acknowledges every envelope (unacknowledged ones are redelivered by Slack), nothing
 * crashes or rejects unhandled, what reaches the handler has a string text, and a normal message
 * afterwards is answered. Replay a failure with SOAK_SEED=<seed>.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IncomingMessage } from '../../src/conversation/types.ts';
import type { SlackAdapter } from '../../adapters/slack/index.ts';
import { FakeSlack } from '../slack/fake-slack.ts';
import { eventEnvelope, eventually, startSocketAdapter } from '../slack/harness.ts';
import { printTable, SEED, SIZES } from './sizes.ts';

const fake = new FakeSlack();
let adapter: SlackAdapter;
const received: IncomingMessage[] = [];
const crashes: string[] = [];
const onRejection = (err: unknown) => crashes.push(`unhandledRejection: ${String(err)}`);
const onException = (err: unknown) => crashes.push(`uncaughtException: ${String(err)}`);

beforeAll(async () => {
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  await fake.start();
  adapter = await startSocketAdapter(fake, async (m, r) => {
    received.push(m);
    if (typeof m.text !== 'string') crashes.push(`the handler got a ${typeof m.text} as text`);
    await r.send({ kind: 'answer', segments: [{ type: 'text', text: `ok ${String(m.text).slice(0, 40)}` }] });
  });
}, 30_000);

afterAll(async () => {
  await adapter?.stop();
  await fake.stop();
  process.off('unhandledRejection', onRejection);
  process.off('uncaughtException', onException);
});

const FIELDS = ['type', 'user', 'text', 'channel', 'ts', 'event_ts', 'team', 'files', 'thread_ts', 'channel_type', 'subtype', 'bot_id'];

const socketCase = fc.oneof(
  // Payloads that are not an event_callback with an object event (no type Bolt knows, `event: null`)
  // are left unacknowledged by Bolt and its socket client themselves, before any handler of ours,
  // so Slack redelivers them a few times; Slack never sends such payloads, not tested here.
  fc.dictionary(fc.constantFrom(...FIELDS, 'x'), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 6 }).map((event) => ({ kind: 'any JSON object as the event', payload: { ...eventEnvelope({}), event } as unknown })),
  fc
    .record({
      type: fc.constantFrom('app_mention', 'message'),
      drop: fc.array(fc.constantFrom(...FIELDS), { maxLength: 3 }),
      retype: fc.array(fc.tuple(fc.constantFrom(...FIELDS), fc.oneof(fc.constant(null), fc.integer(), fc.constant([]), fc.constant({}), fc.string({ unit: 'binary', maxLength: 16 }))), { maxLength: 3 }),
    })
    .map(({ type, drop, retype }) => {
      const event: Record<string, unknown> = { type, user: 'U9', text: '<@UBOT> mutated', channel: type === 'message' ? 'D9' : 'C9', channel_type: type === 'message' ? 'im' : 'channel', ts: '30.1', event_ts: '30.1', team: 'T1' };
      for (const k of drop) delete event[k];
      for (const [k, v] of retype) event[k] = v;
      return { kind: 'mutated event', payload: eventEnvelope(event) as unknown };
    }),
);

describe('fuzz: Slack Socket Mode', () => {
  it(`${Math.ceil(SIZES.fuzzPayloads / 2)} mutated envelopes: each acknowledged, no crash, normal messages still answered`, async () => {
    let n = 0;
    const kinds = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(socketCase, async (c) => {
        const id = `env-fuzz-${n++}`;
        kinds.set(c.kind, (kinds.get(c.kind) ?? 0) + 1);
        fake.deliverOverSocket(id, c.payload);
        await eventually(() => fake.socketAcks.includes(id), 5_000);
      }),
      { numRuns: Math.ceil(SIZES.fuzzPayloads / 2), seed: SEED, endOnFailure: true },
    );
    const ts = `${Date.now() / 1000}`;
    fake.deliverOverSocket('env-after', eventEnvelope({ type: 'app_mention', user: 'U1', text: '<@UBOT> still there?', channel: 'C10', ts, event_ts: ts, team: 'T1' }));
    await eventually(() => fake.messages.some((m) => m.channel === 'C10' && m.text === 'ok still there?'), 10_000);
    printTable('fuzz: Slack Socket Mode', [
      ['envelopes', n],
      ...[...kinds.entries()].map(([k, v]) => [`  ${k}`, v] as const),
      ['acknowledged', fake.socketAcks.filter((a) => a.startsWith('env-fuzz-')).length],
      ['reached the handler', received.length - 1],
      ['crashes, unhandled rejections, non-string texts (must be 0)', crashes.length],
    ]);
    expect(crashes).toEqual([]);
  }, 300_000);
});
