/**
 * Splits text into chunks of at most `limit` characters, preferring paragraph, line and word
 * boundaries, and never leaving a ``` code fence open across chunks: a chunk that ends inside a
 * fence closes it, and the next chunk reopens it (with its language when that is short).
 */
export function splitText(text: string, limit: number): string[] {
  if (limit < 16) throw new RangeError('limit must be at least 16');
  const chunks: string[] = [];
  let rest = text;
  let reopenFence = '';
  while (rest.length > 0) {
    rest = reopenFence + rest;
    const insideFence = reopenFence !== '';
    reopenFence = '';
    if (rest.length <= limit) {
      chunks.push(rest);
      break;
    }
    // Leave room to close an open fence.
    const room = limit - 4;
    const cut = bestCut(rest, room);
    let chunk = rest.slice(0, cut);
    const fences = chunk.match(/```[^\n`]*/g) ?? [];
    if (fences.length % 2 === 1) {
      chunk = chunk.replace(/\s+$/, '') + '\n```';
      // Every pass must shorten the text: a long opener line is reopened without its info string.
      const opener = fences[fences.length - 1];
      reopenFence = `${opener.length + 1 < room / 2 ? opener : '```'}\n`;
    }
    chunks.push(insideFence || reopenFence ? chunk.replace(/\n+$/, '') : chunk.replace(/\s+$/, ''));
    // Inside code, indentation and blank lines are content: only the separator itself goes.
    rest = reopenFence ? rest.slice(cut).replace(/^\n/, '') : rest.slice(skipSpace(rest, cut));
  }
  return chunks.filter((c) => c.trim().length > 0);
}

/** The end of the last paragraph, line or word boundary past half of `room`, else `room`. */
function bestCut(text: string, room: number): number {
  const window = text.slice(0, room + 1);
  for (const sep of ['\n\n', '\n', ' ']) {
    const at = window.lastIndexOf(sep);
    if (at > room / 2) return at + sep.length;
  }
  return room;
}

function skipSpace(text: string, at: number): number {
  let i = at;
  while (i < text.length && (text[i] === ' ' || text[i] === '\n')) i++;
  return i;
}

/**
 * Makes control characters visible instead of letting them act: model output, captions, URLs
 * and file names can carry ESC sequences that would rewrite a terminal (or hide text on a chat
 * platform). C0 controls and DEL become their Unicode control pictures (ESC shows as ␛), C1
 * controls and the bidirectional overrides that reorder text show as <U+XXXX>. Newlines and
 * tabs stay, as layout.
 */
export function showControlCharacters(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f\u0080-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) => {
    const code = c.charCodeAt(0);
    if (code < 0x20) return String.fromCharCode(0x2400 + code);
    if (code === 0x7f) return '\u2421';
    return `<U+${code.toString(16).toUpperCase().padStart(4, '0')}>`;
  });
}
