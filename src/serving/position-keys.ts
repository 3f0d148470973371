/**
 * What each position of a prompt holds, as the prefix store compares it: the token id of a text
 * position, `img:<identity>:<k>` for the k-th visual position of an image. Two prompts may
 * share KV exactly as far as these keys agree from position 0; conversation names play no part
 * (re-tokenized history, trimmed turns and other conversations' identical openings all fall out
 * of the comparison).
 */
import type { AssembledSegment } from '../model/prompt.ts';
import type { PositionKey } from './kv-types.ts';

/**
 * The identity of an image's visual embeddings: its content hash (sha256 hex of the normalized
 * bytes, as `ImageInput.hash`), plus the load mode when it is not the default one, since
 * `demo_upload` resizes before preprocessing and so yields other embeddings.
 */
export function imageIdentity(hash: string, load: string = 'convert_rgb'): string {
  if (hash.length === 0 || hash.includes(':')) throw new RangeError(`an image hash must be non-empty and contain no ':' (got ${JSON.stringify(hash)})`);
  return load === 'convert_rgb' ? hash : `${hash}+${load}`;
}

export function imagePositionKey(identity: string, k: number): string {
  return `img:${identity}:${k}`;
}

/**
 * The keys of an assembled prompt (src/model/prompt.ts `AssembledPrompt.segments`), given the
 * identity of each image segment in order (see imageIdentity).
 */
export function promptPositionKeys(segments: readonly AssembledSegment[], images: readonly string[]): PositionKey[] {
  const keys: PositionKey[] = [];
  let image = 0;
  for (const s of segments) {
    if (s.kind === 'text') {
      for (const id of s.ids) keys.push(id);
      continue;
    }
    const identity = images[image++];
    if (identity === undefined) throw new RangeError(`the prompt has more images than the ${images.length} identities given`);
    for (let k = 0; k < s.nTokens; k++) keys.push(imagePositionKey(identity, k));
  }
  if (image !== images.length) throw new RangeError(`the prompt has ${image} images but ${images.length} identities were given`);
  return keys;
}

/**
 * The keys after the generated tokens fed back into the decoder (each one's embedding is its
 * token's, [RET] included). Pass only the tokens whose keys/values the cache holds: the last
 * sampled token usually was never fed back.
 */
export function withFedBack(keys: readonly PositionKey[], fedBack: readonly number[]): PositionKey[] {
  return [...keys, ...fedBack];
}

/** Positions, up to `max`, on which `a` and `b` agree from position 0. */
export function commonPrefixLength(a: readonly PositionKey[], b: readonly PositionKey[], max: number = Infinity): number {
  const n = Math.min(a.length, b.length, max);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
