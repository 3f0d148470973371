/**
 * The pieces of text the slow GPT-2 tokenizer runs BPE on, and the Python string helpers its
 * added-token handling relies on. Both follow Python's definitions of whitespace, not
 * JavaScript's (they differ on U+0085, U+001C..U+001F and U+FEFF).
 */

/** Unicode White_Space, as the `regex` module's `\s` matches it in GPT-2's pattern. */
const WS = '\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';

/** GPT-2's pre-tokenizer pattern with `\s` spelled out. */
const GPT2_PATTERN = new RegExp(
  `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^${WS}\\p{L}\\p{N}]+|[${WS}]+(?![^${WS}])|[${WS}]+`,
  'gu',
);

export function gpt2Pretokenize(text: string): string[] {
  return text.match(GPT2_PATTERN) ?? [];
}

/** Characters Python's `str.isspace()` accepts (what `str.strip()` removes). */
const PY_SPACE_CODES = new Set<number>([
  ...[0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680],
  ...Array.from({ length: 11 }, (_, i) => 0x2000 + i),
  ...[0x2028, 0x2029, 0x202f, 0x205f, 0x3000],
]);
const PY_SPACE = { test: (ch: string): boolean => PY_SPACE_CODES.has(ch.charCodeAt(0)) };

export function pyLstrip(s: string): string {
  let i = 0;
  while (i < s.length && PY_SPACE.test(s[i])) i++;
  return s.slice(i);
}

export function pyRstrip(s: string): string {
  let j = s.length;
  while (j > 0 && PY_SPACE.test(s[j - 1])) j--;
  return s.slice(0, j);
}
