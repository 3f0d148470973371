import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { Turn } from '../../src/conversation/history.ts';
import { buildPrompt, fitText, PromptTooLongError } from '../../src/conversation/prompt.ts';
import type { PromptItem } from '../../src/model/engine-api.ts';

const words = async (t: string) => (t.trim() === '' ? 0 : t.trim().split(/\s+/).length);
const image = (name: string) => ({ hash: name.padEnd(64, '0'), data: Buffer.from(name) });

function shape(items: PromptItem[]): unknown[] {
  return items.map((i) => (i.type === 'text' ? { text: i.text } : { image: i.image.data.toString() }));
}

interface DialogueTurn {
  prompts: ({ text: string } | { image: string; load: string })[];
  user_text: string;
  return_outputs: string[];
}

describe('buildPrompt', () => {
  it('reproduces the reference demo dialogue prompts turn by turn', async () => {
    const cases = JSON.parse(readFileSync('test/fixtures/reference/fromage_cases.json', 'utf8'));
    const turns = cases.vis1.ii_dialogue.turns as DialogueTurn[];
    // The demo's script: upload, ask, ask, upload, ask. Uploads ride with the next question.
    const uploads: Record<number, string[]> = { 0: ['images/dialogue_1.png'], 2: ['images/dialogue_2.jpg'] };
    const history: Turn[] = [];
    for (const [i, t] of turns.entries()) {
      const current: Turn = { role: 'user', text: t.user_text, images: (uploads[i] ?? []).map(image), at: 0 };
      const built = await buildPrompt(history, current, { contextLength: 2048, nVisualTokens: 1, maxWords: 10, countTokens: words });
      const expected = t.prompts.map((p) => ('image' in p ? { image: p.image } : { text: p.text }));
      expect(shape(built.items)).toEqual(expected);
      history.push(current, { role: 'bot', text: t.return_outputs.join(' '), images: [], at: 0 });
    }
  });

  it('drops whole turns from the oldest to fit context minus the answer budget', async () => {
    const history: Turn[] = [];
    for (let i = 0; i < 6; i++) {
      history.push({ role: 'user', text: `question ${i} a b c`, images: [image(`i${i}`)], at: 0 });
      history.push({ role: 'bot', text: `answer ${i} x y`, images: [], at: 0 });
    }
    const current: Turn = { role: 'user', text: 'now what', images: [], at: 0 };
    // Costs (words): user turn = 4 (image) + 7 ("Q: question i a b c\nA:") = 11; bot = 4; current = 4.
    const budget = { contextLength: 64, nVisualTokens: 4, maxWords: 16, countTokens: words };
    const built = await buildPrompt(history, current, budget);
    expect(built.length).toBeLessThanOrEqual(64 - 16);
    expect(built.droppedTurns % 2).toBe(0);
    const first = built.items[0];
    expect(first.type).toBe('image');
    expect(built.items.at(-1)).toEqual({ type: 'text', text: 'Q: now what\nA:' });
    // 64 - 16 - 1 (</s>) = 47 available: current 4 + 2 pairs * 15 = 34 fits; a third pair (49) does not,
    // and its answer alone is not kept without its question.
    expect(built.droppedTurns).toBe(8);
  });

  it('never starts the prompt with an answer whose question was dropped', async () => {
    const history: Turn[] = [
      { role: 'user', text: 'a very long question indeed with many words in it', images: [], at: 0 },
      { role: 'bot', text: 'short', images: [], at: 0 },
    ];
    const built = await buildPrompt(history, { role: 'user', text: 'q', images: [], at: 0 }, { contextLength: 12, nVisualTokens: 1, maxWords: 4, countTokens: words });
    expect(built.droppedTurns).toBe(2);
  });

  it('refuses a current turn that cannot fit at all', async () => {
    const current: Turn = { role: 'user', text: 'x', images: [image('a'), image('b')], at: 0 };
    await expect(buildPrompt([], current, { contextLength: 40, nVisualTokens: 16, maxWords: 16, countTokens: words })).rejects.toBeInstanceOf(PromptTooLongError);
  });
});

describe('fitText', () => {
  it('cuts at a word boundary to the token budget', async () => {
    const text = Array.from({ length: 100 }, (_, i) => `w${i}`).join(' ');
    const cut = await fitText(text, 10, words);
    expect(await words(cut)).toBeLessThanOrEqual(10);
    expect(cut).toBe(Array.from({ length: 10 }, (_, i) => `w${i}`).join(' '));
    expect(await fitText('short text', 10, words)).toBe('short text');
  });
});
