/**
 * Token generation with a KV cache: one prefill over the prompt, then one position per step
 * (positions past_len + i), instead of FROMAGe's full recompute per token. Each generated
 * token's [RET] embedding comes from the step where it is the *input* token, as in FROMAGe.
 */
import { EngineInputError } from './engine-api.ts';
import { throwIfAborted } from './errors.ts';
import type { FromageGraphs } from './graphs.ts';
import type { AssembledPrompt } from './prompt.ts';
import { chooseToken, SeededRandom } from './sampling.ts';
import type { PositionKey } from '../serving/kv-types.ts';
import { Sequence, type Generated, type SequenceCallbacks, type SequenceSettings } from '../serving/sequence.ts';

export interface GenerateSettings extends SequenceSettings {
  /** Decoder positions (OPT: 2048). */
  readonly maxPositions: number;
}

export interface GenerateCallbacks extends SequenceCallbacks {
  /**
   * What each prompt position holds (src/serving/position-keys.ts): lets a generator that keeps
   * caches (src/serving/batcher.ts) reuse a common prefix. Ignored by generateTokens.
   */
  readonly keys?: readonly PositionKey[];
}

export type { Generated } from '../serving/sequence.ts';

/** How FROMAGe semantics get their tokens: generateTokens alone, or a batcher's row. */
export type TokenGenerator = (prompt: AssembledPrompt, s: GenerateSettings, cb: GenerateCallbacks) => Promise<Generated>;

/** Refuses prompts the decoder cannot hold, before any graph runs. */
export function checkContext(promptLength: number, numWords: number, maxPositions: number): void {
  // Generated tokens are fed back one by one; the last one only when it is [RET] (for its
  // embedding), so numWords more positions at most.
  const needed = promptLength + numWords;
  if (needed > maxPositions) {
    throw new EngineInputError(
      numWords > 0
        ? `the prompt takes ${promptLength} positions and ${numWords} tokens were requested, but the model holds ${maxPositions}; shorten the conversation (or reset it) or ask for fewer words`
        : `the prompt takes ${promptLength} positions but the model holds ${maxPositions}; shorten it`,
    );
  }
}

export async function generateTokens(graphs: FromageGraphs, prompt: AssembledPrompt, s: GenerateSettings, cb: GenerateCallbacks = {}): Promise<Generated> {
  checkContext(prompt.length, s.numWords, s.maxPositions);
  throwIfAborted(cb.signal);
  const seq = new Sequence(s, cb);
  const cache = graphs.emptyCache();
  // The answer's length is bounded up front: one allocation, no growth copies mid-answer.
  cache.preallocate(prompt.length + s.numWords);
  const step = await graphs.decode(prompt.embeds, cache, 1, cb.signal);
  let token = seq.advance(step.logits);
  while (token !== undefined) {
    const fed = await graphs.decode(await graphs.embedTokens([token]), cache, 1);
    token = seq.advance(fed.logits, fed.retEmbeddings.slice(0, graphs.embDim));
  }
  return seq.result();
}

/** num_words = 0: normalized embeddings of every prompt position (position x shared_emb_dim). */
export async function promptEmbeddings(graphs: FromageGraphs, prompt: AssembledPrompt, maxPositions: number, signal?: AbortSignal): Promise<Float32Array> {
  checkContext(prompt.length, 0, maxPositions);
  throwIfAborted(signal);
  const cache = graphs.emptyCache();
  cache.preallocate(prompt.length);
  const out = await graphs.decode(prompt.embeds, cache, 1);
  return out.retEmbeddings;
}

/**
 * The reference's method, kept for comparison and benchmarks: every step recomputes the whole
 * sequence (no cache). Same token choice; quadratic cost.
 */
export async function generateTokensRecompute(graphs: FromageGraphs, prompt: AssembledPrompt, s: GenerateSettings, cb: GenerateCallbacks = {}): Promise<Generated> {
  checkContext(prompt.length, s.numWords, s.maxPositions);
  const rng = new SeededRandom(s.seed);
  const H = graphs.hidden;
  const ids: number[] = [];
  const stepLogits: Float32Array[] = [];
  let embeds = prompt.embeds;
  let out = await graphs.decode(embeds, graphs.emptyCache(), 1);
  for (let i = 0; i < s.numWords; i++) {
    throwIfAborted(cb.signal);
    if (cb.recordLogits) stepLogits.push(out.logits);
    const token = chooseToken(out.logits, i, s, rng);
    ids.push(token);
    cb.onToken?.(ids);
    if (i === s.numWords - 1) break;
    const next = new Float32Array(embeds.length + H);
    next.set(embeds);
    next.set(await graphs.embedTokens([token]), embeds.length);
    embeds = next;
    out = await graphs.decode(embeds, graphs.emptyCache(), 1);
  }
  // Embeddings of the generated positions, from the last full pass (as FROMAGe reads them).
  const E = graphs.embDim;
  const all = out.retEmbeddings;
  const embeddings = ids.map((_, j) => (j < ids.length - 1 ? all.slice((prompt.length + j) * E, (prompt.length + j + 1) * E) : undefined));
  return { ids, embeddings, stepLogits };
}
