/** The JSON `fromage generate --json` and `fromage retrieve --json` print (a stable contract). */
import { showControlCharacters } from '../conversation/text.ts';
import type { FromageResult } from './fromage.ts';

export interface CliImage {
  readonly row: number;
  readonly url: string;
  readonly score: number;
}

export interface CliResult {
  readonly outputs: ({ readonly text: string } | { readonly images: CliImage[] })[];
  readonly generated_ids: number[];
  readonly ret_embeddings: number[][];
}

export function toCliResult(r: FromageResult): CliResult {
  return {
    outputs: r.outputs.map((o) => (o.kind === 'text' ? { text: o.text } : { images: o.images.map((i) => ({ row: i.row, url: i.url, score: i.score })) })),
    generated_ids: [...r.generatedIds],
    ret_embeddings: r.rets.map((x) => Array.from(x.embedding)),
  };
}

/**
 * Plain-text rendering for a terminal. Model text and index URLs are untrusted: their control
 * characters are shown, never sent (an ESC sequence would rewrite the user's terminal).
 */
export function toText(r: FromageResult): string {
  return showControlCharacters(
    r.outputs
      .map((o) => (o.kind === 'text' ? o.text : o.images.map((i) => `  [image row ${i.row}, score ${i.score.toFixed(3)}] ${i.url}`).join('\n') || '  [no image found]'))
      .join('\n'),
  );
}
