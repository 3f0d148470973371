import { describe, expect, it } from 'vitest';
import { findUrlProblems, urlProblem } from '../../src/retrieval/url-check.ts';

describe('index URLs the fetcher can never load', () => {
  it('flags placeholders, other schemes and credentials; passes http(s) and gallery files', () => {
    expect(urlProblem('https://example.com/a.jpg')).toBeUndefined();
    expect(urlProblem('http://127.0.0.1:8080/img/1.png')).toBeUndefined();
    expect(urlProblem('file:///srv/gallery/a%201.png')).toBeUndefined();
    expect(urlProblem('http://127.0.0.1:PORT/img/1.png')).toBe('not a valid URL');
    expect(urlProblem('images/1.png')).toBe('not a valid URL');
    expect(urlProblem('ftp://example.com/a.jpg')).toMatch(/^ftp: URLs are not fetched/);
    expect(urlProblem('https://user:pw@example.com/a.jpg')).toMatch(/credentials/);
  });

  it('counts every problem and keeps the first few as examples', () => {
    const r = findUrlProblems(['https://a/1', 'x', 'https://a/2', 'y', 'z', 'w'], 2);
    expect(r.count).toBe(4);
    expect(r.examples).toEqual([
      { row: 1, url: 'x', why: 'not a valid URL' },
      { row: 3, url: 'y', why: 'not a valid URL' },
    ]);
  });
});
