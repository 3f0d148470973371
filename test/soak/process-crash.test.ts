/**
 * `kill -9` of the whole bot while it writes history and settings. A real `fromage chat`
 * process on the fixture bundle is fed a stream of questions, images and setting changes
 * through stdin and killed at a random moment; after each kill the SQLite files must pass
 * `PRAGMA integrity_check` and `foreign_key_check`, every kept question must have its answer
 * right after it (an exchange is written whole or not at all), and the restarted bot answers.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, spawnFromage, type FromageProcess } from '../support/fromage-process.ts';
import { fixtureBundle, leakedSecrets, SECRETS } from './harness.ts';
import { printTable, randomFrom, SEED, SIZES } from './sizes.ts';

let work: string;
let bundle: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'fromage-soak-kill-'));
  bundle = await fixtureBundle(work);
}, 60_000);

afterAll(() => rm(work, { recursive: true, force: true }));

type Bot = FromageProcess;

function startBot(dataDir: string, command: 'chat' | 'serve' = 'chat', extraEnv: Record<string, string> = {}): Bot {
  const bot = spawnFromage(command, {
    ...extraEnv,
    PATH: process.env.PATH ?? '',
    HOME: work,
    FROMAGE_BUNDLE: bundle,
    FROMAGE_DATA_DIR: dataDir,
    FROMAGE_THREADS: '1',
    LOG_LEVEL: 'debug',
    // Configured secrets: none may reach the process's output.
    HF_TOKEN: SECRETS.HF_TOKEN,
  });
  // A killed child's stdin may reject the last writes; that is expected here.
  bot.child.stdin.on('error', () => undefined);
  return bot;
}

/**
 * Calls `write(i)` every 5-35 ms (until it returns false) and kills the bot with SIGKILL at a
 * random moment 150-1650 ms in; returns once the bot has exited and the writes stopped.
 */
async function killWhileWriting(bot: Bot, random: () => number, write: (i: number) => boolean): Promise<void> {
  let stop = false;
  const feeder = (async () => {
    for (let i = 0; !stop; i++) {
      if (!write(i)) break;
      await new Promise((res) => setTimeout(res, 5 + Math.floor(random() * 30)));
    }
  })();
  await new Promise((r) => setTimeout(r, 150 + Math.floor(random() * 1500)));
  bot.child.kill('SIGKILL');
  stop = true;
  await bot.exited;
  await feeder;
}

/** Types a line and waits for the bot's next answer line after it. */
async function ask(bot: Bot, line: string, timeoutMs = 60_000): Promise<string> {
  const from = bot.output().length;
  bot.child.stdin.write(`${line}\n`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = /fromage(?: \(\w+\))?> [^\n]*\n/.exec(bot.output().slice(from));
    if (m) return m[0];
    if (Date.now() > deadline || bot.child.exitCode !== null) throw new Error(`no answer to "${line}":\n${bot.output().slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** What is wrong with the files after a kill: integrity, foreign keys, half-written exchanges. */
function damage(dataDir: string): string[] {
  const problems: string[] = [];
  for (const file of ['history.sqlite', 'web.sqlite']) {
    const path = join(dataDir, file);
    if (!existsSync(path)) continue;
    const db = new Database(path);
    try {
      const integrity = db.pragma('integrity_check', { simple: true });
      if (integrity !== 'ok') problems.push(`${file}: integrity_check ${String(integrity)}`);
      const fk = db.pragma('foreign_key_check') as unknown[];
      if (fk.length) problems.push(`${file}: foreign_key_check ${JSON.stringify(fk)}`);
      if (file !== 'history.sqlite') continue;
      const turns = db.prepare('SELECT conversation, role FROM turns ORDER BY conversation, id').all() as { conversation: string; role: string }[];
      for (let i = 0; i < turns.length; i++) {
        const t = turns[i];
        const next = turns[i + 1];
        // The oldest turns are trimmed from the front, so a conversation may start with an answer.
        if (t.role === 'user' && (next?.conversation !== t.conversation || next.role !== 'bot')) problems.push(`${file}: a question without its answer in ${t.conversation}`);
      }
      db.prepare('SELECT conversation, json FROM settings').all().forEach((row) => {
        const r = row as { conversation: string; json: string };
        try {
          JSON.parse(r.json);
        } catch {
          problems.push(`${file}: unreadable settings for ${r.conversation}`);
        }
      });
    } finally {
      db.close();
    }
  }
  return problems;
}

/** Kills the bot (SIGKILL) if it still runs and waits for its exit; returns everything it printed. */
async function stopBot(bot: Bot): Promise<string> {
  if (bot.child.exitCode === null && bot.child.signalCode === null) bot.child.kill('SIGKILL');
  await bot.exited;
  return bot.output();
}

/** Checks the files after a kill, adds what is wrong to `problems`; true when anything was. */
function recordDamage(dataDir: string, problems: string[]): boolean {
  const found = damage(dataDir);
  problems.push(...found);
  return found.length > 0;
}

describe('process crash', () => {
  it(`kill -9 at ${SIZES.kills} random moments while writing history and settings: no damaged database, the restarted bot answers`, async () => {
    const random = randomFrom(SEED ^ 0x9);
    const dataDir = join(work, 'data');
    let damaged = 0;
    const problems: string[] = [];
    let answeredAfterRestart = 0;
    let exchangesKept = 0;
    let allOutput = '';
    for (let kill = 0; kill < SIZES.kills; kill++) {
      const bot = startBot(dataDir);
      try {
        // The restarted bot answers (the first start too).
        const answer = await ask(bot, `hello after restart ${kill}`);
        if (/^fromage> /.test(answer)) answeredAfterRestart++;
        // Then a stream of writes: questions (history), settings changes, images, resets.
        await killWhileWriting(bot, random, (i) => {
          const r = random();
          const line =
            r < 0.15 ? `/settings words=${2 + Math.floor(random() * 12)} temperature=${random() < 0.5 ? 0 : 0.7}`
            : r < 0.25 ? '/image test/fixtures/images/landscape.png'
            : r < 0.28 ? '/reset'
            : `question ${kill}.${i} what do you see?`;
          if (!bot.child.stdin.writable) return false;
          bot.child.stdin.write(`${line}\n`);
          return true;
        });
      } finally {
        allOutput += await stopBot(bot);
      }
      if (recordDamage(dataDir, problems)) damaged++;
    }
    // One last start after the last kill answers too.
    const last = startBot(dataDir);
    try {
      if (/^fromage> /.test(await ask(last, 'hello after the last kill'))) answeredAfterRestart++;
    } finally {
      allOutput += await stopBot(last);
    }
    const db = new Database(join(dataDir, 'history.sqlite'), { readonly: true });
    exchangesKept = (db.prepare("SELECT count(*) AS n FROM turns WHERE role = 'bot'").get() as { n: number }).n;
    db.close();
    printTable('process crash', [
      ['kills', SIZES.kills],
      ['damaged databases (must be 0)', damaged],
      ['restarts that answered', `${answeredAfterRestart} of ${SIZES.kills + 1}`],
      ['answers given before the kills', (allOutput.match(/^fromage> /gm) ?? []).length],
      ['answers kept in history at the end', exchangesKept],
    ]);
    expect(problems).toEqual([]);
    expect(answeredAfterRestart).toBe(SIZES.kills + 1);
    expect(leakedSecrets(allOutput)).toEqual([]);
  }, 600_000);
});

const page = { 'x-fromage-csrf': '1' };

describe('process crash (serve with the web chat)', () => {
  it(`kill -9 of fromage serve at ${SIZES.kills} random moments while the web chat writes both databases: none damaged, the restarted bot answers`, async () => {
    const random = randomFrom(SEED ^ 0x77);
    const dataDir = join(work, 'data-serve');
    const problems: string[] = [];
    let damaged = 0;
    let answered = 0;
    let allOutput = '';
    const port = await freePort();
    const base = `http://127.0.0.1:${port}/`;
    const post = (id: string, text: string) => {
      const form = new FormData();
      form.append('text', text);
      return fetch(`${base}api/conversations/${id}/messages`, { method: 'POST', body: form, headers: page }).then((r) => r.arrayBuffer(), () => undefined);
    };
    for (let round = 0; round <= SIZES.kills; round++) {
      const bot = startBot(dataDir, 'serve', { FROMAGE_WEB_PORT: String(port), FROMAGE_USER_RATE: '1000', FROMAGE_USER_BURST: '1000' });
      try {
        // The restarted bot answers: a new conversation, one message, its answer in the transcript.
        const deadline = Date.now() + 60_000;
        let id: string | undefined;
        while (!id) {
          if (Date.now() > deadline || bot.child.exitCode !== null) throw new Error(`the web chat never opened:\n${bot.output().slice(-3000)}`);
          id = await fetch(`${base}api/conversations`, { method: 'POST', headers: page })
            .then((r) => (r.status === 201 ? (r.json() as Promise<{ conversation: { id: string } }>) : undefined))
            .then((b) => b?.conversation.id, () => undefined);
          if (!id) await new Promise((r) => setTimeout(r, 100));
        }
        await post(id, `hello after restart ${round}`);
        for (;;) {
          const body = (await (await fetch(`${base}api/conversations/${id}`)).json()) as { entries: { role: string }[] };
          if (body.entries.some((e) => e.role === 'bot')) break;
          if (Date.now() > deadline) throw new Error(`no answer after restart ${round}`);
          await new Promise((r) => setTimeout(r, 50));
        }
        answered++;
        if (round === SIZES.kills) break;
        // A stream of questions and setting changes, then the kill at a random moment.
        await killWhileWriting(bot, random, (i) => {
          const r = random();
          void post(id, r < 0.2 ? `settings words=${2 + Math.floor(random() * 12)}` : r < 0.25 ? 'reset' : `question ${round}.${i}`);
          return true;
        });
      } finally {
        allOutput += await stopBot(bot);
      }
      if (recordDamage(dataDir, problems)) damaged++;
    }
    printTable('process crash (serve, web chat)', [
      ['kills', SIZES.kills],
      ['damaged databases (must be 0)', damaged],
      ['restarts that answered', `${answered} of ${SIZES.kills + 1}`],
    ]);
    expect(problems).toEqual([]);
    expect(answered).toBe(SIZES.kills + 1);
    expect(leakedSecrets(allOutput)).toEqual([]);
  }, 600_000);
});
