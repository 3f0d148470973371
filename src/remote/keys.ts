/** Names in Redis, all under one prefix so one Redis can serve other things too. */
export const PREFIX = 'fromage';

/** BullMQ queue of one worker (the gateway routes each job to a worker: that is affinity). */
export const workerQueue = (workerId: string): string => `worker-${workerId}`;

export const KEYS = {
  /** Set of worker ids that have announced themselves. */
  workers: `${PREFIX}:workers`,
  /** A worker's announcement; expires unless refreshed by its heartbeat. */
  worker: (id: string) => `${PREFIX}:worker:${id}`,
  /** Pub/sub: workers -> gateway (progress, started, done). Losing one is harmless: the gateway also polls. */
  events: `${PREFIX}:events`,
  /** Pub/sub: gateway -> workers (cancel a job). */
  cancel: `${PREFIX}:cancel`,
  /** The bundle id the gateway expects; workers with another refuse jobs. */
  expectedBundle: `${PREFIX}:expected-bundle`,
  /** tokenizer.json and manifest figures announced by workers, so a gateway needs no bundle files. */
  bundleInfo: (bundleId: string) => `${PREFIX}:bundle:${bundleId}:info`,
  bundleTokenizer: (bundleId: string) => `${PREFIX}:bundle:${bundleId}:tokenizer`,
  /** request key -> the job answering it (see protocol.ts requestKey). */
  request: (key: string) => `${PREFIX}:request:${key}`,
  /** Conversation prefix (affinityKey) -> the worker that last answered it. */
  affinity: (key: string) => `${PREFIX}:affinity:${key}`,
} as const;
