/**
 * Choosing the next token the way FROMAGe's `generate` does: the raw [RET] logit is multiplied
 * by `ret_scale_factor` (or set to -inf before `min_word_tokens`), then argmax at temperature 0,
 * else logits / T, FROMAGe's top-p filter, and a draw from exp(logits). The draw uses our own
 * seedable RNG: reproducible for a seed, not torch's stream.
 */

export interface TokenChoiceSettings {
  readonly retId: number;
  readonly retScaleFactor: number;
  /** Steps before this one may not produce [RET]. */
  readonly minWordTokens: number;
  /** 0 = greedy. */
  readonly temperature: number;
  /** Nucleus mass in (0, 1]; must be 1 when greedy (FROMAGe raises otherwise). */
  readonly topP: number;
}

/** FROMAGe's [RET] logit adjustment, on a copy. `step` is 0-based. */
export function adjustRetLogit(logits: Float32Array, step: number, s: Pick<TokenChoiceSettings, 'retId' | 'retScaleFactor' | 'minWordTokens'>): Float32Array {
  const out = Float32Array.from(logits);
  if (s.retId >= 0 && s.retId < out.length) {
    out[s.retId] = step < s.minWordTokens ? -Infinity : Math.fround(out[s.retId] * s.retScaleFactor);
  }
  return out;
}

/** torch.argmax: the first index of the maximum. */
export function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

export interface SamplingDistribution {
  /** Normalized probabilities over the vocabulary (0 for filtered tokens). */
  readonly probs: Float64Array;
  /** Tokens left after the top-p filter. */
  readonly kept: number;
}

/**
 * FROMAGe's distribution for temperature > 0: logits / T (float32), then with top_p < 1 keep
 * the smallest prefix of the descending order whose cumulative softmax exceeds top_p (the token
 * crossing the threshold is kept), then weights exp(logit).
 */
export function samplingDistribution(logits: Float32Array, temperature: number, topP: number): SamplingDistribution {
  if (!(temperature > 0)) throw new RangeError('temperature must be > 0 for sampling');
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`top_p must be in (0, 1], got ${topP}`);
  const n = logits.length;
  const scaled = new Float32Array(n);
  for (let i = 0; i < n; i++) scaled[i] = logits[i] / temperature;
  const keep = new Uint8Array(n).fill(1);
  if (topP < 1) {
    const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scaled[b] - scaled[a] || a - b);
    const max = scaled[order[0]];
    let total = 0;
    const e = new Float64Array(n);
    for (let r = 0; r < n; r++) total += e[r] = Math.exp(scaled[order[r]] - max);
    // remove[r] = cumsum[r-1] > top_p (shifted right), rank 0 always kept.
    let cum = 0;
    for (let r = 0; r < n; r++) {
      if (r > 0 && cum > topP) keep[order[r]] = 0;
      cum += e[r] / total;
    }
  }
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (keep[i] && scaled[i] > max) max = scaled[i];
  const probs = new Float64Array(n);
  let sum = 0;
  let kept = 0;
  for (let i = 0; i < n; i++) {
    if (!keep[i] || scaled[i] === -Infinity) continue;
    kept++;
    sum += probs[i] = Math.exp(scaled[i] - max);
  }
  for (let i = 0; i < n; i++) probs[i] /= sum;
  return { probs, kept };
}

/** A small seedable generator (mulberry32): uniform floats in [0, 1). */
export class SeededRandom {
  private state: number;
  constructor(seed: number) {
    this.state = (Math.trunc(seed) ^ 0x9e3779b9) >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

/** One draw from `probs` (torch.multinomial's role). */
export function sampleFrom(probs: Float64Array, rng: SeededRandom): number {
  const u = rng.next();
  let cum = 0;
  let last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] <= 0) continue;
    last = i;
    cum += probs[i];
    if (u < cum) return i;
  }
  return last;
}

/** The next token for one step's raw last-position logits. */
export function chooseToken(rawLogits: Float32Array, step: number, s: TokenChoiceSettings, rng: SeededRandom): number {
  const logits = adjustRetLogit(rawLogits, step, s);
  if (s.temperature === 0) {
    if (s.topP !== 1) throw new RangeError('top_p cannot be set if temperature is 0 (greedy decoding)');
    return argmax(logits);
  }
  return sampleFrom(samplingDistribution(logits, s.temperature, s.topP).probs, rng);
}
