import { describe, expect, it } from 'vitest';
import { adjustRetLogit, argmax, chooseToken, samplingDistribution, SeededRandom } from '../../src/model/sampling.ts';
import { maxAbsDiff, refJson, refTensor, row } from './reference.ts';

interface ToppTest { temperature: number; top_p: number; ret_scale_factor: number; probs: string; kept_counts: number[] }
interface Case { step_logits: string; generated_ids_full: number[]; kwargs: { ret_scale_factor: number }; topp_tests?: ToppTest[] }
const cases = refJson<Record<'vis1' | 'vis4', Record<string, Case>>>('fromage_cases.json');
const RET = 295;

describe('top-p filter on recorded step logits (fromage_cases topp_tests)', () => {
  const c = cases.vis1.i_image_qa;
  const logits = refTensor(c.step_logits);
  for (const t of c.topp_tests ?? []) {
    it(`T=${t.temperature} p=${t.top_p}`, () => {
      const expected = refTensor(t.probs);
      const counts: number[] = [];
      for (let step = 0; step < t.kept_counts.length; step++) {
        const adjusted = adjustRetLogit(row(logits, step), step, { retId: RET, retScaleFactor: t.ret_scale_factor, minWordTokens: 0 });
        const dist = samplingDistribution(adjusted, t.temperature, t.top_p);
        counts.push(dist.kept);
        expect(maxAbsDiff(dist.probs, row(expected, step))).toBeLessThan(1e-6);
      }
      expect(counts).toEqual(t.kept_counts);
    });
  }
});

describe('greedy choice on recorded step logits', () => {
  for (const v of ['vis1', 'vis4'] as const) {
    for (const [name, c] of Object.entries(cases[v])) {
      if (!c.step_logits) continue;
      it(`${v}.${name}: argmax after [RET] scaling reproduces the generated ids`, () => {
        const logits = refTensor(c.step_logits);
        const rng = new SeededRandom(0);
        // Some cases record only the first rows (size budget).
        const steps = logits.shape[0];
        const ids = c.generated_ids_full.slice(0, steps).map((_, step) =>
          chooseToken(row(logits, step), step, { retId: RET, retScaleFactor: c.kwargs.ret_scale_factor, minWordTokens: 0, temperature: 0, topP: 1 }, rng),
        );
        expect(ids).toEqual(c.generated_ids_full.slice(0, steps));
      });
    }
  }
});

describe('token choice rules', () => {
  const logits = Float32Array.from([1, 5, 3, -2]);
  it('argmax takes the first maximum', () => {
    expect(argmax(Float32Array.from([1, 7, 7]))).toBe(1);
  });
  it('min_word_tokens forbids [RET] before that step', () => {
    const s = { retId: 1, retScaleFactor: 1, minWordTokens: 2, temperature: 0, topP: 1 };
    expect(chooseToken(logits, 0, s, new SeededRandom(1))).toBe(2);
    expect(chooseToken(logits, 2, s, new SeededRandom(1))).toBe(1);
  });
  it('ret_scale_factor multiplies the raw logit (a negative one gets more negative)', () => {
    expect(adjustRetLogit(logits, 0, { retId: 3, retScaleFactor: 2, minWordTokens: 0 })[3]).toBe(-4);
    expect(adjustRetLogit(logits, 0, { retId: 1, retScaleFactor: 0.5, minWordTokens: 0 })[1]).toBe(2.5);
  });
  it('refuses top_p with greedy decoding, as FROMAGe does', () => {
    expect(() => chooseToken(logits, 0, { retId: 3, retScaleFactor: 1, minWordTokens: 0, temperature: 0, topP: 0.9 }, new SeededRandom(1))).toThrow(/top_p/);
  });
  it('sampling is reproducible for a seed and varies across seeds', () => {
    const s = { retId: 3, retScaleFactor: 1, minWordTokens: 0, temperature: 5, topP: 1 };
    const draw = (seed: number): number[] => {
      const rng = new SeededRandom(seed);
      return Array.from({ length: 40 }, (_, i) => chooseToken(logits, i, s, rng));
    };
    expect(draw(42)).toEqual(draw(42));
    expect(draw(42)).not.toEqual(draw(43));
    expect(new Set(draw(7)).size).toBeGreaterThan(1);
  });
  it('top-p keeps only the nucleus', () => {
    const rng = new SeededRandom(3);
    const s = { retId: 3, retScaleFactor: 1, minWordTokens: 0, temperature: 1, topP: 0.5 };
    for (let i = 0; i < 50; i++) expect(chooseToken(Float32Array.from([0, 10, 0, 0]), i, s, rng)).toBe(1);
  });
});
