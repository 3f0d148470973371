import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openBundle, type Bundle } from '../../src/model/bundle.ts';
import { FromageGraphs } from '../../src/model/graphs.ts';
import { logLikelihood } from '../../src/model/loglik.ts';
import { convertFixtureBundle } from './helpers.ts';
import { refTensor } from './reference.ts';

for (const variant of ['vis1', 'vis4'] as const) {
  describe(`log-likelihood scoring, ${variant}`, () => {
    let bundle: Bundle;
    let cleanup: () => Promise<void>;
    beforeAll(async () => {
      const conv = await convertFixtureBundle(variant);
      cleanup = conv.cleanup;
      bundle = await openBundle(conv.dir, { threads: 1 });
    });
    afterAll(async () => {
      await bundle?.release();
      await cleanup?.();
    });

    it(`matches ${variant}.loglik ([image, prompt_ids], image positions ignored)`, async () => {
      const graphs = new FromageGraphs(bundle);
      const nVis = bundle.manifest.model.n_visual_tokens;
      const vemb = refTensor(`${variant}.visual_embs_captioning`).data.slice(0, nVis * bundle.manifest.model.hidden_size);
      const ids = Array.from(refTensor('prompt_ids').data);
      const got = await logLikelihood(graphs, bundle.tokenizer, [{ kind: 'image', visualEmbs: vemb }, { kind: 'ids', ids }], bundle.manifest.model.max_positions);
      expect(Math.abs(got - refTensor(`${variant}.loglik`).data[0])).toBeLessThan(1e-4);
    });

    it('refuses a prompt with nothing to score', async () => {
      const graphs = new FromageGraphs(bundle);
      await expect(logLikelihood(graphs, bundle.tokenizer, [{ kind: 'ids', ids: [2] }], 128)).rejects.toThrow(/nothing to score/);
    });
  });
}
