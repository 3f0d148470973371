/**
 * The contract between the service (scheduler, adapters' handler) and the model. The real
 * implementation is the FROMAGe engine in this folder; tests use a deterministic double
 * under test/. Nothing here knows about platforms.
 */
import type { ConversationSettings, ReplyImage, Segment } from '../conversation/types.ts';

/** An image in a prompt: normalized bytes (see conversation/images.ts) and their sha256. */
export interface PromptImage {
  /** sha256 hex of `data`; the engine caches visual embeddings by it. */
  readonly hash: string;
  readonly data: Buffer;
}

export type PromptItem =
  | { readonly type: 'text'; readonly text: string }
  | { readonly type: 'image'; readonly image: PromptImage };

export interface GenerationSettings extends ConversationSettings {
  /** Nucleus sampling mass when temperature > 0. */
  readonly topP?: number;
  readonly seed?: number;
  /** Most [RET] tokens resolved per answer. */
  readonly maxNumRets?: number;
}

export interface RunOptions {
  readonly signal?: AbortSignal;
  /** Called with the decoded answer so far, after each generated token. */
  readonly onText?: (textSoFar: string) => void;
}

export interface ChatResult {
  /** Interleaved text and images, in model order. */
  readonly segments: readonly Segment[];
  /** Tokens generated (for tokens/s metrics). */
  readonly generatedTokens: number;
  /**
   * The answer as the reference demo keeps it in the dialogue: the text outputs as FROMAGe
   * returns them (captions with their ' [RET]' suffix) joined by spaces. Defaults to the text
   * segments joined by spaces.
   */
  readonly historyText?: string;
}

export interface EngineInfo {
  /** Identifies the bundle; history caches per-bundle data under it. */
  readonly bundleId: string;
  /** Positions the decoder accepts (2048 for OPT). */
  readonly contextLength: number;
  /** Positions one image takes in the prompt. */
  readonly nVisualTokens: number;
  /** Whether a retrieval index is loaded (else [RET] cannot show images). */
  readonly hasIndex: boolean;
}

export interface Engine {
  readonly info: EngineInfo;
  /** Tokens `text` takes in a prompt, without the leading `</s>`. */
  countTokens(text: string): Promise<number>;
  chat(prompt: readonly PromptItem[], settings: GenerationSettings, options?: RunOptions): Promise<ChatResult>;
  /** `/fromage retrieve`: the [RET] embedding of `query`, searched in the index, `count` images. */
  retrieve(query: string, count: number, options?: RunOptions): Promise<readonly ReplyImage[]>;
  close(): Promise<void>;
}

/** A failure the user caused (prompt too long, bad image); its message is safe to show. */
export class EngineInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EngineInputError';
  }
}
