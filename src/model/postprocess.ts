/**
 * FROMAGe's text post-processing after generation (generate_for_images_and_texts): cut at the
 * first newline, find the [RET]s, decode the caption before each one, `truncate_caption`.
 * Pure functions; the oracle is reference/postprocess_cases.json.
 */
import type { Tokenizer } from './tokenizer/tokenizer.ts';

/**
 * Index of the first newline token, or 0 when there is none. FROMAGe only cuts when it is > 0:
 * a newline as the very first token is kept (and so are the tokens after it).
 */
export function newlineTruncIndex(ids: readonly number[], newlineId: number): number {
  const j = ids.indexOf(newlineId);
  return j < 0 ? 0 : j;
}

/** The ids FROMAGe keeps after newline truncation (num_words > 0 only). */
export function truncateAtNewline(ids: readonly number[], newlineId: number): number[] {
  const j = newlineTruncIndex(ids, newlineId);
  return j > 0 ? ids.slice(0, j) : [...ids];
}

/** Positions of the first `maxNumRets` [RET] tokens. */
export function retPositions(ids: readonly number[], retId: number, maxNumRets: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < ids.length && out.length < maxNumRets; i++) if (ids[i] === retId) out.push(i);
  return out;
}

/** FROMAGe's utils.truncate_caption: strip newlines, cut after the first newline, else after the first period. */
export function truncateCaption(caption: string): string {
  const c = stripChar(caption, '\n');
  let cut = c.indexOf('\n') + 1;
  if (cut <= 0) cut = c.indexOf('.') + 1;
  return cut > 0 ? c.slice(0, cut) : c;
}

function stripChar(s: string, ch: string): string {
  let i = 0;
  let j = s.length;
  while (i < j && s[i] === ch) i++;
  while (j > i && s[j - 1] === ch) j--;
  return s.slice(i, j);
}

/** One element of FROMAGe's `return_outputs`: a text piece, or the slot of the k-th [RET]'s images. */
export type OutputSlot = { readonly kind: 'text'; readonly text: string } | { readonly kind: 'ret'; readonly retIndex: number; readonly position: number };

export interface PostProcessed {
  /** `batch_decode(ids[last:ret], skip_special_tokens=True)` per [RET] (or the whole answer without one). */
  readonly captionsRaw: string[];
  readonly retPositions: number[];
  readonly outputs: OutputSlot[];
}

/**
 * Captions and output slots for already-truncated ids. Text after the last used [RET] is
 * dropped, as FROMAGe does; without any [RET] the whole decode goes through truncate_caption.
 */
export function postProcess(tokenizer: Tokenizer, ids: readonly number[], retId: number, maxNumRets: number): PostProcessed {
  const positions = retPositions(ids, retId, maxNumRets);
  const decode = (part: readonly number[]): string => tokenizer.decode(part, { skipSpecialTokens: true });
  if (positions.length === 0) {
    const caption = decode(ids);
    return { captionsRaw: [caption], retPositions: [], outputs: [{ kind: 'text', text: truncateCaption(caption) }] };
  }
  const captionsRaw: string[] = [];
  const outputs: OutputSlot[] = [];
  let last = 0;
  positions.forEach((pos, k) => {
    const caption = decode(ids.slice(last, pos));
    captionsRaw.push(caption);
    last = pos + 1;
    outputs.push({ kind: 'text', text: `${truncateCaption(caption)} [RET]` });
    outputs.push({ kind: 'ret', retIndex: k, position: pos });
  });
  return { captionsRaw, retPositions: positions, outputs };
}
