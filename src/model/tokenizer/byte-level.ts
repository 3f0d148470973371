/**
 * GPT-2's reversible byte <-> printable-character table: every byte gets a visible character
 * so BPE can work on strings. Printable Latin-1 bytes map to themselves, the others to U+0100...
 */

function buildByteToChar(): string[] {
  const direct: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) direct.push(b);
  for (let b = 0xa1; b <= 0xac; b++) direct.push(b);
  for (let b = 0xae; b <= 0xff; b++) direct.push(b);
  const table: string[] = new Array<string>(256);
  for (const b of direct) table[b] = String.fromCodePoint(b);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    if (table[b] === undefined) table[b] = String.fromCodePoint(256 + next++);
  }
  return table;
}

export const BYTE_TO_CHAR: readonly string[] = buildByteToChar();

export const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

const utf8 = new TextEncoder();

/** UTF-8 bytes of `text`, each as its byte-level character. */
export function toByteLevel(text: string): string {
  let out = '';
  for (const b of utf8.encode(text)) out += BYTE_TO_CHAR[b];
  return out;
}

/** Python's `bytes.decode('utf-8', errors='replace')`: invalid sequences become U+FFFD. */
const lenientUtf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

/** Joins byte-level token strings back into text (the slow tokenizer's convert_tokens_to_string). */
export function fromByteLevel(tokens: readonly string[]): string {
  const joined = tokens.join('');
  const bytes = new Uint8Array(joined.length);
  let n = 0;
  for (const ch of joined) {
    const b = CHAR_TO_BYTE.get(ch);
    if (b === undefined) throw new Error(`token character U+${ch.codePointAt(0)!.toString(16)} is not a byte-level symbol`);
    bytes[n++] = b;
  }
  return lenientUtf8.decode(bytes.subarray(0, n));
}
