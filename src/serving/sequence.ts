/**
 * One answer being generated, as a state machine fed with decoder outputs: it chooses each
 * token (FROMAGe's [RET] scaling, greedy or top-p), says which token to feed back next, and
 * keeps each fed-back token's [RET] embedding. The single-sequence loop (src/model/generate.ts)
 * and the batched one (batcher.ts) drive the same object, so both answer alike by construction.
 */
import { throwIfAborted } from '../model/errors.ts';
import { chooseToken, SeededRandom, type TokenChoiceSettings } from '../model/sampling.ts';

export interface SequenceSettings extends TokenChoiceSettings {
  readonly numWords: number;
  readonly seed: number;
}

export interface SequenceCallbacks {
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

export class Sequence {
  private readonly rng: SeededRandom;
  private readonly ids: number[] = [];
  private readonly embeddings: (Float32Array | undefined)[] = [];
  private readonly stepLogits: Float32Array[] = [];
  private readonly fed: number[] = [];
  /** The token handed out to be fed back, whose [RET] embedding the next call brings. */
  private feeding: number | undefined;
  private finished = false;

  constructor(
    private readonly s: SequenceSettings,
    private readonly cb: SequenceCallbacks = {},
  ) {
    this.rng = new SeededRandom(s.seed);
  }

  get done(): boolean {
    return this.finished;
  }

  /** Tokens fed back and decoded so far, in order: what the live cache holds after the prompt. */
  get fedBack(): readonly number[] {
    return this.fed;
  }

  /**
   * Takes the decoder's output for the last fed position (the prompt's last position first,
   * then each token returned here): its logits and, for a fed-back token, that position's
   * [RET] embedding. Returns the next token to feed back, or undefined when the answer is
   * complete. Throws CancelledError once the signal is aborted.
   */
  advance(logits: Float32Array, retEmbedding?: Float32Array): number | undefined {
    if (this.finished) throw new Error('advance called on a finished sequence');
    if (this.feeding !== undefined) {
      if (!retEmbedding) throw new Error('a fed-back token needs its [RET] embedding');
      this.embeddings.push(retEmbedding);
      this.fed.push(this.feeding);
      this.feeding = undefined;
    }
    // A [RET] generated as the last token was fed back only for its embedding.
    if (this.ids.length >= this.s.numWords) return this.finish();
    throwIfAborted(this.cb.signal);
    const step = this.ids.length;
    if (this.cb.recordLogits) this.stepLogits.push(logits);
    const token = chooseToken(logits, step, this.s, this.rng);
    this.ids.push(token);
    this.cb.onToken?.(this.ids);
    // FROMAGe never feeds the last token back (and raises if it is [RET]); we do it only for
    // [RET], so that one gets its embedding too.
    if (step === this.s.numWords - 1 && token !== this.s.retId) {
      this.embeddings.push(undefined);
      return this.finish();
    }
    this.feeding = token;
    return token;
  }

  private finish(): undefined {
    this.finished = true;
    return undefined;
  }

  result(): Generated {
    if (!this.finished) throw new Error('the sequence has not finished');
    return { ids: this.ids, embeddings: this.embeddings, stepLogits: this.stepLogits };
  }
}
