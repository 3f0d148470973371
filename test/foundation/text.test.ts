import { describe, expect, it } from 'vitest';
import { showControlCharacters, splitText } from '../../src/conversation/text.ts';

describe('splitText', () => {
  it('keeps short text whole and splits long text at word boundaries', () => {
    expect(splitText('hello world', 40)).toEqual(['hello world']);
    const words = Array.from({ length: 60 }, (_, i) => `word${i}`).join(' ');
    const chunks = splitText(words, 50);
    for (const c of chunks) expect(c.length).toBeLessThanOrEqual(50);
    expect(chunks.join(' ')).toBe(words);
  });

  it('closes and reopens a code fence across chunks, keeping indentation', () => {
    const code = ['```python', ...Array.from({ length: 12 }, (_, i) => `    x${i} = ${i}`), '```'].join('\n');
    const chunks = splitText(code, 60);
    expect(chunks.length).toBeGreaterThan(1);
    for (const c of chunks) {
      expect(c.length).toBeLessThanOrEqual(60);
      expect((c.match(/```/g) ?? []).length % 2).toBe(0);
    }
    expect(chunks[1].startsWith('```python\n    x')).toBe(true);
    expect(chunks.join('\n')).toContain('    x11 = 11');
  });

  it('terminates on a fence opener longer than the limit and on one unbroken word', () => {
    const longFence = '```' + 'x'.repeat(100) + '\n' + 'y '.repeat(200);
    const chunks = splitText(longFence, 40);
    for (const c of chunks) expect(c.length).toBeLessThanOrEqual(40);
    expect(splitText('z'.repeat(200), 50).join('')).toBe('z'.repeat(200));
    const quoted = 'I found no image I could load for "```' + 'q'.repeat(3600) + '".';
    for (const c of splitText(quoted, 3500)) expect(c.length).toBeLessThanOrEqual(3500);
  });
});

describe('showControlCharacters', () => {
  it('shows escape sequences and other controls instead of letting them act', () => {
    expect(showControlCharacters('red \u001b[31mtext\u001b[0m\rover\u0007 \u009b2J')).toBe('red ␛[31mtext␛[0m␍over␇ <U+009B>2J');
    expect(showControlCharacters('a\u202Eevil\u2066')).toBe('a<U+202E>evil<U+2066>');
    expect(showControlCharacters('lines\nand\ttabs stay, as does ünïcödé 🧀')).toBe('lines\nand\ttabs stay, as does ünïcödé 🧀');
  });
});
