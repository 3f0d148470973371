import { describe, expect, it } from 'vitest';
import type { AssembledSegment } from '../../src/model/prompt.ts';
import { commonPrefixLength, imageIdentity, imagePositionKey, promptPositionKeys, withFedBack } from '../../src/serving/position-keys.ts';

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);

describe('position keys', () => {
  it('text positions hold token ids, image positions img:<hash>:<k>', () => {
    const segments: AssembledSegment[] = [
      { kind: 'image', nTokens: 2 },
      { kind: 'text', idsTokenizer: [2, 10, 11], ids: [2, 10, 11] },
      { kind: 'image', nTokens: 2 },
      { kind: 'text', idsTokenizer: [2, 12], ids: [12] },
    ];
    expect(promptPositionKeys(segments, [imageIdentity(A), imageIdentity(B)])).toEqual([
      `img:${A}:0`,
      `img:${A}:1`,
      2,
      10,
      11,
      `img:${B}:0`,
      `img:${B}:1`,
      12,
    ]);
  });

  it('fed-back tokens extend the keys', () => {
    expect(withFedBack([2, 5], [7, 8])).toEqual([2, 5, 7, 8]);
  });

  it('the same image loaded another way is another image', () => {
    expect(imageIdentity(A)).toBe(A);
    expect(imageIdentity(A, 'demo_upload')).not.toBe(A);
    expect(imagePositionKey(imageIdentity(A, 'demo_upload'), 0)).not.toBe(imagePositionKey(A, 0));
  });

  it('refuses hashes that could collide with the key syntax, and a wrong image count', () => {
    expect(() => imageIdentity('')).toThrow(/non-empty/);
    expect(() => imageIdentity('x:1')).toThrow(/':'/);
    const segments: AssembledSegment[] = [{ kind: 'image', nTokens: 1 }];
    expect(() => promptPositionKeys(segments, [])).toThrow(/more images/);
    expect(() => promptPositionKeys(segments, [A, B])).toThrow(/1 images but 2/);
  });

  it('common prefix from position 0 only, bounded by max', () => {
    expect(commonPrefixLength([1, 2, 3], [1, 2, 4])).toBe(2);
    expect(commonPrefixLength([1, 2, 3], [9, 2, 3])).toBe(0);
    expect(commonPrefixLength([1, 2, 3], [1, 2, 3, 4])).toBe(3);
    expect(commonPrefixLength([1, 2, 3], [1, 2, 3], 2)).toBe(2);
    expect(commonPrefixLength([1, '1'], [1, 1])).toBe(1); // a token id is never an image position
  });
});
