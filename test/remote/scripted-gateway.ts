/**
 * A gateway process for the remote tests: the real service (history, scheduler, handler) with
 * FROMAGE_REDIS_URL's remote engine, wired as `fromage serve` wires it (src/service/run.ts), and
 * a scripted adapter instead of a platform: one JSON message per stdin line
 * `{"id","user","conversation","text"}`, one JSON reply per stdout line `{"id","kind","text"}`.
 */
import { createInterface } from 'node:readline';
import { loadConfig } from '../../src/config.ts';
import type { Adapter, IncomingMessage, MessageHandler, Reply } from '../../src/conversation/types.ts';
import { createLogger } from '../../src/log.ts';
import { attachGateway, followCapacity } from '../../src/remote/open-gateway.ts';
import { Readiness, startHttp } from '../../src/service/http.ts';
import { createMetrics } from '../../src/service/metrics.ts';
import { openConfiguredEngine } from '../../src/service/open-engine.ts';
import { startService } from '../../src/service/service.ts';

const config = loadConfig();
const logger = createLogger(config);
const metrics = createMetrics();
const readiness = new Readiness();
const http = config.HTTP_PORT === undefined ? undefined : await startHttp(config.HTTP_PORT, metrics.registry, readiness, '127.0.0.1');
const engine = await openConfiguredEngine(config, logger, { yes: false });
const serviceConfig = attachGateway(engine, { config, metrics, readiness, logger });

const textOf = (r: Reply) => r.segments.map((s) => (s.type === 'text' ? s.text : `[${s.images.length} images]`)).join(' ');

const scripted: Adapter = {
  platform: 'web',
  async start(handler: MessageHandler) {
    const lines = createInterface({ input: process.stdin });
    lines.on('line', (line) => {
      const m = JSON.parse(line) as { id: string; user: string; conversation: string; text: string };
      const message: IncomingMessage = {
        key: { platform: 'web', workspace: 'test', channel: m.conversation },
        id: m.id,
        author: { id: m.user, name: m.user },
        text: m.text,
        images: [],
        intent: { kind: 'chat' },
        receivedAt: new Date(),
      };
      void handler(message, {
        send: async (reply) => void process.stdout.write(`${JSON.stringify({ id: m.id, kind: reply.kind, text: textOf(reply) })}\n`),
        typing: async () => {},
        progress: async (p) => {
          if (p.state === 'running' && p.text) process.stdout.write(`${JSON.stringify({ id: m.id, progress: p.text })}\n`);
        },
      });
    });
  },
  async stop() {},
};

const service = await startService({ config: serviceConfig, logger, engine, adapters: [scripted], early: { http, metrics, readiness } });
followCapacity(engine, service.scheduler, logger);
logger.info({ concurrency: serviceConfig.FROMAGE_BATCH }, 'scripted gateway ready');
process.once('SIGTERM', () => {
  const keep = setInterval(() => {}, 1000);
  void service.stop().finally(() => {
    clearInterval(keep);
    process.exit(0);
  });
});
