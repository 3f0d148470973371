/**
 * FROMAGe's generate_for_images_and_texts on the bundle's graphs: prompt assembly, generation
 * (or, with num_words = 0, the prompt's own [RET]), newline truncation, captions and [RET]
 * resolution through a RetrievalBackend. Returns everything the reference records, so the
 * oracle can check each stage.
 */
import { checkContext, generateTokens, promptEmbeddings, type TokenGenerator } from './generate.ts';
import { promptPositionKeys } from '../serving/position-keys.ts';
import type { FromageGraphs } from './graphs.ts';
import { postProcess, truncateAtNewline, newlineTruncIndex } from './postprocess.ts';
import { assemblePrompt, type AssembledPrompt, type PromptPiece } from './prompt.ts';
import type { RetrievalBackend, RetrievalCandidate, RetrievedImage } from './retrieval-backend.ts';
import type { Tokenizer } from './tokenizer/tokenizer.ts';
import type { Manifest } from './manifest.ts';

export interface FromageSettings {
  readonly numWords: number;
  readonly retScaleFactor: number;
  readonly maxNumRets: number;
  readonly maxImgPerRet: number;
  readonly temperature: number;
  readonly topP: number;
  readonly seed: number;
  readonly minWordTokens: number;
  /**
   * Reproduce the reference's num_words=0 bug: the [RET] index found in the text-only ids is
   * used on the image+text embedding sequence (n_visual_tokens too early per preceding image).
   * Off by default: the true [RET] position is used.
   */
  readonly referenceRetOffsetBug: boolean;
}

export const DEFAULT_FROMAGE_SETTINGS: FromageSettings = Object.freeze({
  numWords: 0,
  retScaleFactor: 1,
  maxNumRets: 1,
  maxImgPerRet: 1,
  temperature: 0,
  topP: 1,
  seed: 0,
  minWordTokens: 0,
  referenceRetOffsetBug: false,
});

export interface ResolvedRet {
  /** Index of the [RET] in the (truncated) generated ids. */
  readonly position: number;
  readonly embedding: Float32Array;
  /** The max_img_per_ret + 3 candidates, in rank order. */
  readonly candidates: readonly RetrievalCandidate[];
  readonly attempted: readonly number[];
  readonly returned: readonly RetrievedImage[];
}

export type FromageOutput = { readonly kind: 'text'; readonly text: string } | { readonly kind: 'images'; readonly images: readonly RetrievedImage[] };

export interface FromageResult {
  readonly prompt: AssembledPrompt;
  /** All generated tokens (num_words > 0), before truncation. */
  readonly generatedIdsFull: readonly number[];
  /** FROMAGe's generated_ids after newline truncation (the prompt's text ids when num_words = 0). */
  readonly generatedIds: readonly number[];
  readonly truncIdx: number | null;
  readonly captionsRaw: readonly string[];
  readonly rets: readonly ResolvedRet[];
  readonly outputs: readonly FromageOutput[];
  readonly stepLogits: readonly Float32Array[];
}

export interface FromageContext {
  readonly graphs: FromageGraphs;
  readonly tokenizer: Tokenizer;
  readonly manifest: Manifest;
  readonly retrieval?: RetrievalBackend;
  /** Where the tokens come from; default generateTokens on `graphs` (a batcher's row in the worker). */
  readonly generate?: TokenGenerator;
}

export interface FromageCallbacks {
  readonly signal?: AbortSignal;
  readonly onToken?: (ids: readonly number[]) => void;
  readonly recordLogits?: boolean;
  /**
   * The identity of each image piece, in order (src/serving/position-keys.ts imageIdentity):
   * with them the generator learns what every prompt position holds and may reuse a kept prefix.
   */
  readonly imageIdentities?: readonly string[];
}

export async function generateForImagesAndTexts(ctx: FromageContext, pieces: readonly PromptPiece[], settings: Partial<FromageSettings>, cb: FromageCallbacks = {}): Promise<FromageResult> {
  const s = { ...DEFAULT_FROMAGE_SETTINGS, ...settings };
  const { graphs, tokenizer, manifest } = ctx;
  const retId = manifest.tokens.ret;
  const maxPositions = manifest.model.max_positions;
  const prompt = await assemblePrompt(graphs, tokenizer, pieces);
  checkContext(prompt.length, s.numWords, maxPositions);

  let generatedIdsFull: number[] = [];
  let generatedIds: number[];
  let truncIdx: number | null = null;
  let embeddingAt: (position: number) => Float32Array | undefined;
  let stepLogits: Float32Array[] = [];
  const E = graphs.embDim;
  if (s.numWords === 0) {
    const all = await promptEmbeddings(graphs, prompt, maxPositions, cb.signal);
    generatedIds = [...prompt.textIds];
    embeddingAt = (k) => {
      const pos = s.referenceRetOffsetBug ? k : prompt.textPositions[k];
      return pos < prompt.length ? all.slice(pos * E, (pos + 1) * E) : undefined;
    };
  } else {
    const generate: TokenGenerator = ctx.generate ?? ((p, gs, gcb) => generateTokens(graphs, p, gs, gcb));
    const keys = cb.imageIdentities ? promptPositionKeys(prompt.segments, cb.imageIdentities) : undefined;
    const gen = await generate(
      prompt,
      { numWords: s.numWords, seed: s.seed, maxPositions, retId, retScaleFactor: s.retScaleFactor, minWordTokens: s.minWordTokens, temperature: s.temperature, topP: s.topP },
      { signal: cb.signal, onToken: cb.onToken, recordLogits: cb.recordLogits, keys },
    );
    generatedIdsFull = gen.ids;
    stepLogits = gen.stepLogits;
    truncIdx = newlineTruncIndex(gen.ids, manifest.tokens.newline);
    generatedIds = truncateAtNewline(gen.ids, manifest.tokens.newline);
    embeddingAt = (k) => gen.embeddings[k];
  }

  const post = postProcess(tokenizer, generatedIds, retId, s.maxNumRets);
  const seen = new Set<number>();
  const rets: ResolvedRet[] = [];
  const outputs: FromageOutput[] = [];
  for (const slot of post.outputs) {
    if (slot.kind === 'text') {
      outputs.push({ kind: 'text', text: slot.text });
      continue;
    }
    const embedding = embeddingAt(slot.position);
    if (!embedding) throw new Error(`no [RET] embedding for position ${slot.position}`);
    if (!ctx.retrieval) {
      rets.push({ position: slot.position, embedding, candidates: [], attempted: [], returned: [] });
      outputs.push({ kind: 'images', images: [] });
      continue;
    }
    const candidates = await ctx.retrieval.search(embedding, s.maxImgPerRet + 3, seen);
    const { images, attempted } = await ctx.retrieval.resolve(candidates, s.maxImgPerRet, cb.signal);
    for (const row of attempted) seen.add(row);
    rets.push({ position: slot.position, embedding, candidates, attempted, returned: images });
    outputs.push({ kind: 'images', images });
  }
  return { prompt, generatedIdsFull, generatedIds, truncIdx, captionsRaw: post.captionsRaw, rets, outputs, stepLogits };
}
