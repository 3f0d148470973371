/**
 * Log-likelihood of an interleaved prompt (FROMAGe's get_log_lik_scores): the negated mean
 * causal-LM cross-entropy over text tokens, image positions labelled -100 (ignored). Used for
 * ranking candidate texts.
 */
import { checkContext } from './generate.ts';
import type { FromageGraphs } from './graphs.ts';
import { assemblePrompt, type PromptPiece } from './prompt.ts';
import type { Tokenizer } from './tokenizer/tokenizer.ts';

export async function logLikelihood(graphs: FromageGraphs, tokenizer: Tokenizer, pieces: readonly PromptPiece[], maxPositions: number): Promise<number> {
  const prompt = await assemblePrompt(graphs, tokenizer, pieces);
  checkContext(prompt.length, 0, maxPositions);
  const labels = new Int32Array(prompt.length).fill(-100);
  prompt.textPositions.forEach((pos, k) => (labels[pos] = prompt.textIds[k]));
  const cache = graphs.emptyCache();
  cache.preallocate(prompt.length);
  const out = await graphs.decode(prompt.embeds, cache, prompt.length);
  const V = graphs.vocab;
  let total = 0;
  let count = 0;
  for (let t = 0; t + 1 < prompt.length; t++) {
    const label = labels[t + 1];
    if (label < 0) continue;
    const logits = out.logits.subarray(t * V, (t + 1) * V);
    let max = -Infinity;
    for (const v of logits) if (v > max) max = v;
    let sum = 0;
    for (const v of logits) sum += Math.exp(v - max);
    total += logits[label] - max - Math.log(sum);
    count++;
  }
  if (count === 0) throw new RangeError('nothing to score: the prompt has no text token after its first position');
  return total / count;
}
