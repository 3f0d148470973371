/** The fixture model as the batcher tests use it: opened on one thread, greedy settings, prompts of plain ids. */
import type { Bundle } from '../../src/model/bundle.ts';
import type { GenerateSettings } from '../../src/model/generate.ts';
import type { FromageGraphs } from '../../src/model/graphs.ts';
import { assemblePrompt, type AssembledPrompt } from '../../src/model/prompt.ts';
import { openFixtureModel } from '../model/helpers.ts';

export interface FixtureBatch {
  readonly bundle: Bundle;
  readonly graphs: FromageGraphs;
  /** Greedy, 10 words, the bundle's context and [RET] id. */
  readonly settings: GenerateSettings;
  /** A prompt of `n` positions: `</s>` then ids that differ with `mul`. */
  idsPrompt(n: number, mul: number): Promise<AssembledPrompt>;
  close(): Promise<void>;
}

export async function openFixtureBatch(): Promise<FixtureBatch> {
  const { bundle, graphs, close } = await openFixtureModel();
  const m = bundle.manifest;
  return {
    bundle,
    graphs,
    settings: { numWords: 10, seed: 0, maxPositions: m.model.max_positions, retId: m.tokens.ret, retScaleFactor: 1, minWordTokens: 0, temperature: 0, topP: 1 },
    idsPrompt: (n, mul) => assemblePrompt(graphs, bundle.tokenizer, [{ kind: 'ids', ids: [2, ...Array.from({ length: n - 1 }, (_, i) => 4 + ((i * mul) % 280))] }]),
    close,
  };
}
