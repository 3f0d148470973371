/**
 * Token generation with a KV cache: one prefill over the prompt, then one position per step
 * (positions past_len + i), instead of FROMAGe's full recompute per token. Each generated
 * token's [RET] embedding comes from the step where it is the *input* token, as in FROMAGe.
 */
import { EngineInputError } from './engine-api.ts';
import { throwIfAborted } from './errors.ts';
import type { FromageGraphs } from './graphs.ts';
import type { AssembledPrompt } from './prompt.ts';
import { chooseToken, SeededRandom, type TokenChoiceSettings } from './sampling.ts';

export interface GenerateSettings extends TokenChoiceSettings {
  readonly numWords: number;
  readonly seed: number;
  /** Decoder positions (OPT: 2048). */
  readonly maxPositions: number;
}

export interface GenerateCallbacks {
  readonly signal?: AbortSignal;
  /** Called after each token with every id generated so far. */
  readonly onToken?: (ids: readonly number[]) => void;
  /** Keep each step's raw logits (tests, benchmarks). */
  readonly recordLogits?: boolean;
}

export interface Generated {
  readonly ids: number[];
  /** Per generated token, its normalized [RET] embedding (undefined for a final token that is not [RET]). */
  readonly embeddings: (Float32Array | undefined)[];
  readonly stepLogits: Float32Array[];
}

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
  const rng = new SeededRandom(s.seed);
  const ids: number[] = [];
  const embeddings: (Float32Array | undefined)[] = [];
  const stepLogits: Float32Array[] = [];
  throwIfAborted(cb.signal);
  const cache = graphs.emptyCache();
  // The answer's length is bounded up front: one allocation, no growth copies mid-answer.
  cache.preallocate(prompt.length + s.numWords);
  let step = await graphs.decode(prompt.embeds, cache, 1, cb.signal);
  for (let i = 0; i < s.numWords; i++) {
    throwIfAborted(cb.signal);
    if (cb.recordLogits) stepLogits.push(step.logits);
    const token = chooseToken(step.logits, i, s, rng);
    ids.push(token);
    cb.onToken?.(ids);
    const last = i === s.numWords - 1;
    // FROMAGe never feeds the last token back (and raises if it is [RET]); we do it only for
    // [RET], so that one gets its embedding too.
    if (last && token !== s.retId) {
      embeddings.push(undefined);
      break;
    }
    step = await graphs.decode(await graphs.embedTokens([token]), cache, 1);
    embeddings.push(step.retEmbeddings.slice(0, graphs.embDim));
  }
  return { ids, embeddings, stepLogits };
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
