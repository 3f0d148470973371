/**
 * The web chat: a page on a loopback port by default, with the same conversation model,
 * history, queue and engine as Discord and Slack. `start` resolves once it listens.
 */
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { serve } from '@hono/node-server';
import type { HistoryStore } from '../../src/conversation/history.ts';
import type { AdapterLogger } from '../../src/conversation/logger.ts';
import type { Adapter, MessageHandler } from '../../src/conversation/types.ts';
import { createWebApp } from './app.ts';
import { LiveConversations } from './live.ts';
import { checkWebSettings, WebConfigError, type WebSettings } from './settings.ts';
import { TranscriptStore } from './store.ts';

export { DEFAULT_WEB_PORT, WebConfigError, type WebSettings } from './settings.ts';

export interface WebAdapterOptions extends WebSettings {
  /** The model's history, so Undo and Delete also take exchanges out of the prompt. */
  readonly history?: Pick<HistoryStore, 'dropLastExchange' | 'reset'>;
  readonly logger?: AdapterLogger;
  /** Told the address to open once the server listens. */
  readonly onListening?: (url: string) => void;
}

export interface WebAdapter extends Adapter {
  /** http://host:port/ once started. */
  readonly url: string | undefined;
}

export function createWebAdapter(options: WebAdapterOptions): WebAdapter {
  checkWebSettings(options);
  let handler: MessageHandler | undefined;
  let server: Server | undefined;
  let store: TranscriptStore | undefined;
  let url: string | undefined;
  let stopNow: () => void = () => {};
  const inFlight = new Set<Promise<void>>();

  return {
    platform: 'web',
    get url() {
      return url;
    },
    async start(h) {
      store = new TranscriptStore(options.storePath);
      const stopping = new Promise<void>((r) => (stopNow = r));
      const app = createWebApp({ settings: options, store, live: new LiveConversations(), handler: () => handler, history: options.history, logger: options.logger, stopping, inFlight });
      server = await listen(app.fetch, options).catch((err: unknown) => {
        store?.close();
        throw err;
      });
      const address = server.address() as AddressInfo;
      const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      url = `http://${host === '0.0.0.0' || host === '[::]' ? 'localhost' : host}:${address.port}/`;
      handler = h;
      options.logger?.info({ url }, 'web chat listening');
      options.onListening?.(url);
    },
    async stop() {
      handler = undefined;
      stopNow();
      await Promise.allSettled([...inFlight]);
      if (server) {
        const s = server;
        await new Promise<void>((r) => {
          s.close(() => r());
          s.closeAllConnections();
        });
      }
      store?.close();
    },
  };
}

function listen(fetch: (request: Request) => Response | Promise<Response>, options: WebSettings): Promise<Server> {
  return new Promise<Server>((resolve, reject) => {
    const s = serve({ fetch, port: options.port, hostname: options.host }) as Server;
    s.once('listening', () => resolve(s));
    s.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'EADDRINUSE'
          ? new WebConfigError(`Port ${options.port} on ${options.host} is already in use; set FROMAGE_WEB_PORT to a free port.`)
          : err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND'
            ? new WebConfigError(`FROMAGE_WEB_HOST=${options.host} is not an address of this machine; use 127.0.0.1, 0.0.0.0 or one of its addresses.`)
            : err,
      ),
    );
  });
}
