import { describe, expect, it } from 'vitest';
import { toText } from '../../src/model/cli-output.ts';
import type { FromageResult } from '../../src/model/fromage.ts';

function result(outputs: FromageResult['outputs']): FromageResult {
  return { outputs } as unknown as FromageResult;
}

describe('fromage generate / retrieve text output', () => {
  it('shows control characters from model text and index URLs instead of sending them to the terminal', () => {
    const out = toText(
      result([
        { kind: 'text', text: 'hi\u001b[2J\u0010 there' },
        { kind: 'images', images: [{ row: 3, url: 'file:///g/\u001b]0;pwned\u0007.png', score: 1 } as never] },
      ]),
    );
    // eslint-disable-next-line no-control-regex
    expect(out).not.toMatch(/[\u0000-\u0008\u000b-\u001f]/);
    expect(out).toContain('hi\u241b[2J\u2410 there');
    expect(out).toContain('[image row 3, score 1.000] file:///g/\u241b]0;pwned\u2407.png');
  });
});
