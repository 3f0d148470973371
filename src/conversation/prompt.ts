/**
 * History to the FROMAGe prompt, as the reference demo builds it: each uploaded image is
 * followed by an empty string (the demo appends `[image, '']`), a question is `Q: <text>\nA:`,
 * an answer is its text outputs joined by spaces plus `\n`. Whole turns are dropped from the
 * oldest until the prompt plus the answer budget fits the model's context.
 */
import type { PromptItem } from '../model/engine-api.ts';
import type { Turn } from './history.ts';

export interface PromptBudget {
  /** Decoder positions (2048 for OPT). */
  readonly contextLength: number;
  /** Positions one image takes. */
  readonly nVisualTokens: number;
  /** Tokens reserved for the answer (num_words). */
  readonly maxWords: number;
  /** Tokens of a text segment, without the leading `</s>`. */
  readonly countTokens: (text: string) => Promise<number>;
}

export interface BuiltPrompt {
  readonly items: PromptItem[];
  /** Positions the prompt takes. */
  readonly length: number;
  /** Past turns left out to fit the context. */
  readonly droppedTurns: number;
}

/**
 * The tokenizer's added tokens (OPT's `</s>`, `<s>`, `<pad>`, `<unk>`; FROMAGe's `<|image|>` and
 * `[RET]`), which it matches anywhere in a text before anything else. Typed by a user they would
 * become those tokens: an end of sequence, a retrieval request, an image slot.
 */
const ADDED_TOKENS = /<\/s>|<s>|<pad>|<unk>|<\|image\|>|\[RET\]/g;

/** U+2060 WORD JOINER: invisible, and no added token contains it. */
const JOINER = '\u2060';

/**
 * What a user typed, made safe to tokenize: each added token's spelling is broken by an
 * invisible joiner after its first character, so the model reads those characters as text and
 * never as the special token. Only text people typed goes through here; the model's own
 * answers (which may hold `[RET]` by design) do not.
 */
export function plainUserText(text: string): string {
  return text.replace(ADDED_TOKENS, (t) => `${t[0]}${JOINER}${t.slice(1)}`);
}

export function questionText(text: string): string {
  return `Q: ${plainUserText(text)}\nA:`;
}

export function answerText(text: string): string {
  return `${text}\n`;
}

/** The prompt items of one turn, in the reference demo's order. */
export function turnItems(turn: Turn): PromptItem[] {
  const items: PromptItem[] = [];
  for (const image of turn.images) {
    items.push({ type: 'image', image });
    items.push({ type: 'text', text: '' });
  }
  if (turn.role === 'user') items.push({ type: 'text', text: questionText(turn.text) });
  else items.push({ type: 'text', text: answerText(turn.text) });
  return items;
}

async function turnCost(turn: Turn, budget: PromptBudget): Promise<number> {
  let cost = turn.images.length * budget.nVisualTokens;
  for (const item of turnItems(turn)) if (item.type === 'text' && item.text.length > 0) cost += await budget.countTokens(item.text);
  return cost;
}

/**
 * Builds the prompt for `current` (the new user turn) after `history`. Throws `PromptTooLongError`
 * when the current turn alone does not fit; callers trim the user's text first (see `fitText`).
 */
export async function buildPrompt(history: readonly Turn[], current: Turn, budget: PromptBudget): Promise<BuiltPrompt> {
  // One position for the `</s>` the first text segment keeps.
  const available = budget.contextLength - budget.maxWords - 1;
  const currentCost = await turnCost(current, budget);
  if (currentCost > available) throw new PromptTooLongError(currentCost, available);
  const costs = await Promise.all(history.map((t) => turnCost(t, budget)));
  let used = currentCost;
  let start = history.length;
  // Keep the newest turns that fit; a bot answer without its question is dropped with it.
  while (start > 0 && used + costs[start - 1] <= available) {
    used += costs[start - 1];
    start--;
  }
  while (start < history.length && history[start].role === 'bot') {
    used -= costs[start];
    start++;
  }
  const kept = history.slice(start);
  const items = [...kept.flatMap(turnItems), ...turnItems(current)];
  return { items, length: used + 1, droppedTurns: start };
}

export class PromptTooLongError extends Error {
  constructor(
    readonly needed: number,
    readonly available: number,
  ) {
    super(`The message needs ${needed} positions but only ${available} are available in the model's context.`);
    this.name = 'PromptTooLongError';
  }
}

/**
 * Cuts `text` so that it takes at most `maxTokens` tokens, at a word boundary when possible.
 * Returns the text unchanged when it fits.
 */
export async function fitText(text: string, maxTokens: number, countTokens: (t: string) => Promise<number>): Promise<string> {
  if ((await countTokens(text)) <= maxTokens) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if ((await countTokens(text.slice(0, mid))) <= maxTokens) lo = mid;
    else hi = mid - 1;
  }
  const cut = text.slice(0, lo);
  const space = cut.lastIndexOf(' ');
  return space > lo * 0.8 ? cut.slice(0, space) : cut;
}
