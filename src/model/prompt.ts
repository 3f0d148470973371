/**
 * Prompt assembly exactly as FROMAGe's generate_for_images_and_texts: each string is tokenized
 * with `</s>` prepended and only the first string keeps it (so an empty string after the first
 * contributes nothing); each image contributes its n_visual_tokens captioning embeddings.
 * Positions then run 0..L-1 over the concatenation.
 */
import type { FromageGraphs } from './graphs.ts';
import type { Tokenizer } from './tokenizer/tokenizer.ts';

export type PromptPiece =
  | { readonly kind: 'text'; readonly text: string }
  /** Already tokenized text, used as is (no BOS handling); for scoring and tests. */
  | { readonly kind: 'ids'; readonly ids: readonly number[] }
  | { readonly kind: 'image'; readonly visualEmbs: Float32Array };

export type AssembledSegment =
  | { readonly kind: 'text'; readonly idsTokenizer: readonly number[]; readonly ids: readonly number[] }
  | { readonly kind: 'image'; readonly nTokens: number };

export interface AssembledPrompt {
  /** length x hidden. */
  readonly embeds: Float32Array;
  readonly length: number;
  readonly segments: readonly AssembledSegment[];
  /** FROMAGe's `input_ids`: the text ids only, concatenated. */
  readonly textIds: readonly number[];
  /** Position in the full sequence of each of `textIds`. */
  readonly textPositions: readonly number[];
}

/** Token ids of each piece after FROMAGe's BOS rule (no model needed). */
export function tokenizePieces(tokenizer: Tokenizer, pieces: readonly PromptPiece[], nVisualTokens: number): AssembledSegment[] {
  let addBos = true;
  return pieces.map((p): AssembledSegment => {
    if (p.kind === 'image') return { kind: 'image', nTokens: nVisualTokens };
    if (p.kind === 'ids') return { kind: 'text', idsTokenizer: p.ids, ids: p.ids };
    const idsTokenizer = tokenizer.encode(p.text, { addSpecialTokens: true });
    const ids = addBos ? idsTokenizer : idsTokenizer.slice(1);
    addBos = false;
    return { kind: 'text', idsTokenizer, ids };
  });
}

/** Prompt length in positions. */
export function promptLength(segments: readonly AssembledSegment[]): number {
  return segments.reduce((n, s) => n + (s.kind === 'image' ? s.nTokens : s.ids.length), 0);
}

export async function assemblePrompt(graphs: FromageGraphs, tokenizer: Tokenizer, pieces: readonly PromptPiece[]): Promise<AssembledPrompt> {
  const segments = tokenizePieces(tokenizer, pieces, graphs.nVisualTokens);
  const length = promptLength(segments);
  const H = graphs.hidden;
  const textIds = segments.flatMap((s) => (s.kind === 'text' ? s.ids : []));
  // One embed call for every text token, scattered into place below.
  const textEmbeds = await graphs.embedTokens(textIds);
  const embeds = new Float32Array(length * H);
  const textPositions: number[] = [];
  let pos = 0;
  let t = 0;
  pieces.forEach((p, i) => {
    const seg = segments[i];
    if (p.kind === 'image') {
      if (p.visualEmbs.length !== graphs.nVisualTokens * H) throw new Error(`image embedding has ${p.visualEmbs.length} values, expected ${graphs.nVisualTokens * H}`);
      embeds.set(p.visualEmbs, pos * H);
      pos += graphs.nVisualTokens;
      return;
    }
    if (seg.kind !== 'text') return;
    embeds.set(textEmbeds.subarray(t * H, (t + seg.ids.length) * H), pos * H);
    for (let k = 0; k < seg.ids.length; k++) textPositions.push(pos + k);
    pos += seg.ids.length;
    t += seg.ids.length;
  });
  return { embeds, length, segments, textIds, textPositions };
}
