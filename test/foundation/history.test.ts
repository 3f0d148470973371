import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteHistoryStore, type Turn } from '../../src/conversation/history.ts';
import { DEFAULT_SETTINGS } from '../../src/conversation/types.ts';

const dirs: string[] = [];
function tempDb(): string {
  const d = mkdtempSync(join(tmpdir(), 'fromage-history-'));
  dirs.push(d);
  return join(d, 'sub', 'history.sqlite');
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const img = (n: number) => ({ hash: `h${n}`.padEnd(64, '0'), data: Buffer.from([n, n, n]) });
const user = (text: string, images = [] as ReturnType<typeof img>[]): Turn => ({ role: 'user', text, images, at: 1 });
const bot = (text: string): Turn => ({ role: 'bot', text, images: [], at: 2 });

describe('SqliteHistoryStore', () => {
  it('survives a reopen of the database, images included', () => {
    const path = tempDb();
    const a = new SqliteHistoryStore(path, { maxTurns: 10 });
    a.append('c1', user('hi', [img(1), img(2)]), bot('hello'));
    a.updateSettings('c1', { maxWords: 48 });
    a.close();
    const b = new SqliteHistoryStore(path, { maxTurns: 10 });
    const turns = b.turns('c1');
    expect(turns.map((t) => [t.role, t.text])).toEqual([
      ['user', 'hi'],
      ['bot', 'hello'],
    ]);
    expect(turns[0].images.map((i) => [...i.data])).toEqual([
      [1, 1, 1],
      [2, 2, 2],
    ]);
    expect(b.settings('c1').maxWords).toBe(48);
    b.close();
  });

  it('keeps conversations apart and resets one', () => {
    const s = new SqliteHistoryStore(':memory:', { maxTurns: 10 });
    s.append('c1', user('one'));
    s.append('c2', user('two'));
    s.reset('c1');
    expect(s.turns('c1')).toEqual([]);
    expect(s.turns('c2').map((t) => t.text)).toEqual(['two']);
    s.close();
  });

  it('caps turns per conversation and drops orphaned images', () => {
    const s = new SqliteHistoryStore(':memory:', { maxTurns: 3 });
    s.append('c', user('a', [img(9)]), bot('b'));
    s.append('c', user('c'), bot('d'));
    expect(s.turns('c').map((t) => t.text)).toEqual(['b', 'c', 'd']);
    s.close();
  });

  it('shares one copy of an image used twice', () => {
    const s = new SqliteHistoryStore(':memory:', { maxTurns: 10 });
    s.append('c', user('a', [img(1)]), user('b', [img(1)]));
    s.reset('c');
    s.append('c', user('x', [img(1)]));
    expect(s.turns('c')[0].images[0].data.length).toBe(3);
    s.close();
  });

  it('ignores stored settings that no longer validate', () => {
    const path = tempDb();
    const a = new SqliteHistoryStore(path, { maxTurns: 10 });
    a.updateSettings('c', { maxWords: 40 });
    a.close();
    const raw = new Database(path);
    raw.prepare("UPDATE settings SET json = '{\"maxWords\": 9999, \"temperature\": 0.5, \"oldKnob\": 1}'").run();
    raw.close();
    const b = new SqliteHistoryStore(path, { maxTurns: 10 });
    expect(b.settings('c')).toEqual({ ...DEFAULT_SETTINGS, temperature: 0.5 });
    b.close();
  });

  it('returns the reference demo defaults for settings', () => {
    const s = new SqliteHistoryStore(':memory:', { maxTurns: 10 });
    expect(s.settings('new')).toEqual({ retScaleFactor: 1.0, maxImages: 2, maxWords: 32, temperature: 0 });
    expect(DEFAULT_SETTINGS.maxWords).toBe(32);
    expect(s.updateSettings('new', { temperature: 0.7, maxImages: undefined })).toEqual({ ...DEFAULT_SETTINGS, temperature: 0.7 });
    s.close();
  });
});
