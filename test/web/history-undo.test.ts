import { describe, expect, it } from 'vitest';
import { SqliteHistoryStore, type Turn } from '../../src/conversation/history.ts';

const img = (n: number) => ({ hash: `h${n}`.padEnd(64, '0'), data: Buffer.from([n, n, n]) });
const user = (text: string, at: number, images = [] as ReturnType<typeof img>[]): Turn => ({ role: 'user', text, images, at });
const bot = (text: string, at: number): Turn => ({ role: 'bot', text, images: [], at });

describe('HistoryStore.dropLastExchange (the web chat\'s Undo)', () => {
  it('drops the last question and its answer, keeps the rest and other conversations', () => {
    const s = new SqliteHistoryStore(':memory:', { maxTurns: 10 });
    s.append('c1', user('first', 1), bot('one', 2));
    s.append('c1', user('second', 3, [img(7)]), bot('two', 4));
    s.append('c2', user('elsewhere', 5), bot('kept', 6));
    expect(s.dropLastExchange('c1')).toBe(2);
    expect(s.turns('c1').map((t) => t.text)).toEqual(['first', 'one']);
    expect(s.turns('c2').map((t) => t.text)).toEqual(['elsewhere', 'kept']);
    s.close();
  });

  it('removes nothing when the last question is not the one named (its exchange was never saved)', () => {
    const s = new SqliteHistoryStore(':memory:', { maxTurns: 10 });
    s.append('c1', user('saved', 10), bot('answer', 11));
    expect(s.dropLastExchange('c1', 99)).toBe(0);
    expect(s.turns('c1')).toHaveLength(2);
    expect(s.dropLastExchange('c1', 10)).toBe(2);
    expect(s.dropLastExchange('c1')).toBe(0);
    s.close();
  });

  it('forgets images no turn refers to any more', () => {
    const s = new SqliteHistoryStore(':memory:', { maxTurns: 10 });
    s.append('c1', user('look', 1, [img(1)]), bot('ok', 2));
    s.dropLastExchange('c1');
    s.append('c1', user('again', 3, [img(2)]), bot('ok', 4));
    expect(s.turns('c1')[0].images.map((i) => [...i.data])).toEqual([[2, 2, 2]]);
    s.close();
  });
});
