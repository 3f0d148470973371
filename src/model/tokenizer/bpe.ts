/**
 * Byte-pair merging of one pre-token, lowest merge rank first, every occurrence of the chosen
 * pair per pass (GPT-2's `bpe`). Results are memoized: prompts repeat words a lot.
 */
export class BytePairMerger {
  private readonly ranks = new Map<string, number>();
  private readonly cache = new Map<string, string[]>();

  constructor(merges: readonly (readonly [string, string])[]) {
    merges.forEach(([a, b], i) => this.ranks.set(pairKey(a, b), i));
  }

  merge(word: string): string[] {
    const hit = this.cache.get(word);
    if (hit) return hit;
    let parts = Array.from(word);
    while (parts.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < parts.length - 1; i++) {
        const r = this.ranks.get(pairKey(parts[i], parts[i + 1]));
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const [a, b] = [parts[best], parts[best + 1]];
      const next: string[] = [];
      for (let i = 0; i < parts.length; i++) {
        if (i < parts.length - 1 && parts[i] === a && parts[i + 1] === b) {
          next.push(a + b);
          i++;
        } else {
          next.push(parts[i]);
        }
      }
      parts = next;
    }
    if (this.cache.size > 50_000) this.cache.clear();
    this.cache.set(word, parts);
    return parts;
  }
}

function pairKey(a: string, b: string): string {
  return `${a}\u0000${b}`;
}
