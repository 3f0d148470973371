/**
 * How big the soak runs are. `npm test` runs the short version (it must fit CI's 3 minutes on
 * two cores); `npm run test:soak` sets SOAK=full for the sizes the README promises. SOAK_SEED
 * replays one run: every generator and every random moment is drawn from it.
 */
export const FULL = process.env.SOAK === 'full';

export const SIZES = FULL
  ? { messages: 1000, users: 100, conversations: 50, fuzzImages: 400, fuzzText: 400, fuzzPayloads: 300, kills: 20, workerKills: 5, redisMessages: 200 }
  : { messages: 200, users: 20, conversations: 10, fuzzImages: 100, fuzzText: 120, fuzzPayloads: 100, kills: 3, workerKills: 2, redisMessages: 40 };

/** The run's seed: SOAK_SEED when given (a replay), else a fresh one that the tests print. */
export const SEED = process.env.SOAK_SEED !== undefined ? Number(process.env.SOAK_SEED) : Math.floor(Math.random() * 2 ** 31);

/** A small deterministic generator (mulberry32) for random moments, so a seed replays them too. */
export function randomFrom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One line per figure, in a fixed-width table the run prints. */
export function printTable(title: string, rows: readonly (readonly [string, string | number])[]): string {
  const width = Math.max(...rows.map(([k]) => k.length));
  const out = [`${title} (seed ${SEED}${FULL ? ', full' : ', short'})`, ...rows.map(([k, v]) => `  ${k.padEnd(width)}  ${v}`)].join('\n');
  console.log(out);
  return out;
}
