/**
 * Which index URLs the image fetcher can never load, found at import time: a malformed URL
 * (a placeholder such as `http://host:PORT/...` left in the file), a scheme other than
 * http/https/file, or credentials in the URL. Retrieval would skip these rows silently, so
 * `fromage index import` says so once, with examples, when the index is written.
 */
export interface UrlProblem {
  readonly row: number;
  readonly url: string;
  readonly why: string;
}

export function urlProblem(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return 'not a valid URL';
  }
  if (parsed.protocol === 'file:') return undefined;
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') return `${parsed.protocol} URLs are not fetched (only http, https and local gallery files)`;
  if (parsed.username || parsed.password) return 'URLs with credentials are not fetched';
  return undefined;
}

/** The count of unfetchable URLs and the first few of them. */
export function findUrlProblems(urls: readonly string[], examples = 3): { count: number; examples: UrlProblem[] } {
  let count = 0;
  const first: UrlProblem[] = [];
  for (let row = 0; row < urls.length; row++) {
    const why = urlProblem(urls[row]);
    if (why === undefined) continue;
    count++;
    if (first.length < examples) first.push({ row, url: urls[row], why });
  }
  return { count, examples: first };
}

export function formatUrlProblems(total: number, found: { count: number; examples: UrlProblem[] }): string {
  const lines = [`${found.count} of ${total} URLs can never be fetched; retrieval will skip those rows:`];
  for (const e of found.examples) lines.push(`  row ${e.row}: ${e.url.slice(0, 200)} (${e.why})`);
  if (found.count > found.examples.length) lines.push(`  ... and ${found.count - found.examples.length} more`);
  lines.push('Fix the URLs in the source file and import it again (or replace them in urls.txt of the index).');
  return lines.join('\n');
}
