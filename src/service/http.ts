/**
 * `/healthz` and Prometheus `/metrics` on HTTP_PORT. The port opens first thing, so a health
 * check sees a bot that is still loading its model or connecting to a platform, and what it
 * waits for.
 */
import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';

export interface HealthSource {
  /** Adapters started, queue state and whether shutdown began. */
  health(): { ok: boolean; [k: string]: unknown };
}

export type ServiceStage = 'starting' | 'ready' | 'stopping';

/**
 * What `/healthz` says: `starting` with the steps still awaited (the model, each platform),
 * `ready` with the running service's figures, `stopping` once shutdown began. Only `ready` is ok.
 */
export class Readiness implements HealthSource {
  private stage: ServiceStage = 'starting';
  private readonly awaited: string[] = [];
  private details: () => Record<string, unknown> = () => ({});
  /** Figures from outside the service (a gateway's model workers), in every stage. */
  private readonly extras: (() => Record<string, unknown>)[] = [];

  addDetails(provider: () => Record<string, unknown>): void {
    this.extras.push(provider);
  }

  waitFor(what: string): void {
    if (!this.awaited.includes(what)) this.awaited.push(what);
  }

  done(what: string): void {
    const at = this.awaited.indexOf(what);
    if (at >= 0) this.awaited.splice(at, 1);
  }

  ready(details: () => Record<string, unknown>): void {
    this.details = details;
    this.awaited.length = 0;
    this.stage = 'ready';
  }

  stopping(): void {
    this.stage = 'stopping';
  }

  get current(): ServiceStage {
    return this.stage;
  }

  health(): { ok: boolean; [k: string]: unknown } {
    const base = { ok: this.stage === 'ready', status: this.stage, ...Object.assign({}, ...this.extras.map((e) => e())) };
    if (this.stage === 'starting') return { ...base, waitingFor: [...this.awaited] };
    return { ...base, ...this.details() };
  }
}

export function startHttp(port: number, registry: Registry, source: HealthSource, host = '0.0.0.0'): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET') {
      res.writeHead(405, { allow: 'GET' }).end();
      return;
    }
    if (path === '/healthz') {
      const h = source.health();
      res.writeHead(h.ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(h));
      return;
    }
    if (path === '/metrics') {
      registry.metrics().then(
        (body) => res.writeHead(200, { 'content-type': registry.contentType }).end(body),
        (err: Error) => res.writeHead(500).end(err.message),
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /healthz or /metrics\n');
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
