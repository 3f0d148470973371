/** FROMAGe's outputs as the reply segments the engine sends back from its worker. */
import type { FromageResult } from './fromage.ts';
import type { WireImage, WireSegment } from './worker-protocol.ts';

export function wireImages(r: FromageResult, k: number): WireImage[] {
  const out = r.outputs.filter((o) => o.kind === 'images')[k];
  if (!out || out.kind !== 'images') return [];
  return out.images.flatMap((i) => (i.data ? [{ data: new Uint8Array(i.data), contentType: i.contentType ?? 'application/octet-stream', row: i.row, indexRow: i.indexRow, url: i.url, score: i.score, width: i.width, height: i.height }] : []));
}

/** What the user reads where the model asked for an image that cannot be shown. */
export const NO_INDEX_NOTE = '(I wanted to show an image here, but no image index is configured: the bot owner can add one with `fromage index import`.)';
export const NO_IMAGE_LOADED_NOTE = '(I looked for an image here, but none of the matches could be loaded.)';

/**
 * Reply segments: FROMAGe's outputs without the literal ' [RET]' marker, empty text dropped. A
 * [RET] that yields no image says why, once per answer, instead of vanishing.
 */
export function segments(r: FromageResult, hasIndex: boolean): WireSegment[] {
  const out: WireSegment[] = [];
  let k = 0;
  let explained = false;
  for (const o of r.outputs) {
    if (o.kind === 'text') {
      const text = o.text.endsWith(' [RET]') ? o.text.slice(0, -' [RET]'.length) : o.text;
      if (text.trim()) out.push({ type: 'text', text });
    } else {
      const images = wireImages(r, k++);
      if (images.length > 0) out.push({ type: 'images', images });
      else if (!explained) {
        explained = true;
        out.push({ type: 'text', text: hasIndex ? NO_IMAGE_LOADED_NOTE : NO_INDEX_NOTE });
      }
    }
  }
  return out;
}
