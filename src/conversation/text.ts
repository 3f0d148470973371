/**
 * Splits text into chunks of at most `limit` characters, preferring paragraph, line and word
 * boundaries, and never leaving a ``` code fence open across chunks.
 */
export function splitText(text: string, limit: number): string[] {
  if (limit < 16) throw new RangeError('limit must be at least 16');
  const chunks: string[] = [];
  let rest = text;
  let reopenFence = '';
  while (rest.length > 0) {
    rest = reopenFence + rest;
    reopenFence = '';
    if (rest.length <= limit) {
      chunks.push(rest);
      break;
    }
    // Leave room to close an open fence.
    const room = limit - 4;
    let cut = bestCut(rest, room);
    let chunk = rest.slice(0, cut);
    const fences = chunk.match(/```[^\n`]*/g) ?? [];
    if (fences.length % 2 === 1) {
      const opener = fences[fences.length - 1];
      chunk = chunk.replace(/\s+$/, '') + '\n```';
      reopenFence = opener + '\n';
    }
    chunks.push(chunk.replace(/\s+$/, ''));
    cut = skipSpace(rest, cut);
    rest = rest.slice(cut);
  }
  return chunks.filter((c) => c.trim().length > 0);
}

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
