/**
 * Builds the Bolt App for the configured mode. Socket Mode (an app-level token) needs no
 * public URL and is the default; HTTP mode serves Bolt's receiver at /slack/events, which
 * verifies each request's signature and rejects stale timestamps (replays).
 */
import { inspect } from 'node:util';
import { App, AuthorizationError, HTTPModuleFunctions, HTTPReceiver, LogLevel, SocketModeReceiver, type Logger as BoltLogger, type ReceiverProcessEventErrorHandlerArgs } from '@slack/bolt';
import type { SlackConfig } from './config.ts';
import type { AdapterLogger } from '../../src/conversation/logger.ts';
import type { WebClientOptions } from './web-api.ts';
import { UserFacingError } from '../../src/conversation/errors.ts';

export const EVENTS_PATH = '/slack/events';

export type SlackMode =
  | { readonly kind: 'socket'; readonly appToken: string }
  | { readonly kind: 'http'; readonly signingSecret: string; readonly port: number; readonly host?: string };

/** Socket Mode whenever an app token is set; HTTP mode needs the signing secret and a port. */
export function slackMode(config: SlackConfig): SlackMode {
  if (config.SLACK_APP_TOKEN) return { kind: 'socket', appToken: config.SLACK_APP_TOKEN };
  if (config.SLACK_SIGNING_SECRET && config.SLACK_PORT !== undefined)
    return { kind: 'http', signingSecret: config.SLACK_SIGNING_SECRET, port: config.SLACK_PORT };
  throw new UserFacingError(
    'Slack needs SLACK_APP_TOKEN (Socket Mode, no public URL) or SLACK_SIGNING_SECRET and SLACK_PORT (HTTP mode).',
  );
}

function describe(parts: unknown[]): string {
  return parts.map((p) => (typeof p === 'string' ? p : inspect(p, { depth: 3, breakLength: Infinity }))).join(' ');
}

/** Bolt logs through our pino logger, so its lines get the same secret redaction. */
export function boltLogger(logger: AdapterLogger): BoltLogger {
  let level = LogLevel.INFO;
  return {
    debug: (...msg: unknown[]) => logger.debug(describe(msg)),
    info: (...msg: unknown[]) => logger.info(describe(msg)),
    warn: (...msg: unknown[]) => logger.warn(describe(msg)),
    error: (...msg: unknown[]) => logger.error(describe(msg)),
    setLevel: (l: LogLevel) => {
      level = l;
    },
    getLevel: () => level,
    setName: () => undefined,
  };
}

export interface BoltAppOptions {
  readonly botToken: string;
  readonly botId?: string;
  readonly botUserId?: string;
  readonly mode: SlackMode;
  readonly clientOptions: WebClientOptions;
  readonly logger: AdapterLogger;
}

/**
 * A signed event Bolt itself cannot read (a field of another type, e.g. `channel: null`) made
 * it answer 500, and Slack retries a 500 three times, each failing the same way (and disables
 * an app's events after many failures). It is acknowledged and logged instead; authorization
 * failures keep Bolt's own answer.
 */
async function acknowledgeUnreadable(args: ReceiverProcessEventErrorHandlerArgs): Promise<boolean> {
  const { error, response, logger } = args;
  if (response.headersSent || error instanceof AuthorizationError) return HTTPModuleFunctions.defaultProcessEventErrorHandler(args);
  logger.warn(`slack: an event could not be processed and was acknowledged so Slack does not retry it: ${error instanceof Error ? error.message : String(error)}`);
  response.writeHead(200);
  response.end();
  return true;
}

export function createBoltApp(options: BoltAppOptions): App {
  const logger = boltLogger(options.logger);
  const { mode } = options;
  const receiver =
    mode.kind === 'socket'
      ? new SocketModeReceiver({
          appToken: mode.appToken,
          logger,
          // Bolt hands the socket client's Web API options over only through installerOptions;
          // without them apps.connections.open would ignore SLACK_API_URL.
          installerOptions: { clientOptions: options.clientOptions },
          // As over HTTP (acknowledgeUnreadable): an envelope Bolt cannot read is acknowledged, not redelivered to fail again.
          processEventErrorHandler: async ({ error, logger: log }) => {
            log.warn(`slack: an event could not be processed and was acknowledged so Slack does not redeliver it: ${error instanceof Error ? error.message : String(error)}`);
            return true;
          },
        })
      : new HTTPReceiver({ signingSecret: mode.signingSecret, endpoints: EVENTS_PATH, logger, processBeforeResponse: false, processEventErrorHandler: acknowledgeUnreadable });
  return new App({
    token: options.botToken,
    // Known from our own auth.test at start, so Bolt does not call it again per event.
    botId: options.botId,
    botUserId: options.botUserId,
    tokenVerificationEnabled: false,
    receiver,
    logger,
    clientOptions: options.clientOptions,
    convoStore: false,
  });
}
