/**
 * "Save conversation": one HTML file holding the text and every image as a data: URI, readable
 * offline. Everything from the model or the user is escaped; the file carries a CSP that allows
 * no script at all, so a saved conversation is as inert as the page.
 */
import type { ConversationSummary, Entry, ShownImage } from './store.ts';

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (ch) => ESCAPES[ch]);
}

/** A link only for http(s) URLs; anything else (javascript:, data:) stays text. */
export function safeHttpUrl(url: string | undefined): string | undefined {
  if (!url) return undefined;
  try {
    const u = new URL(url);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : undefined;
  } catch {
    return undefined;
  }
}

const STYLE = `body{font:16px/1.5 system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem;color:#1d1d1f}
.e{margin:1rem 0;padding:.75rem 1rem;border-radius:.5rem;white-space:pre-wrap;overflow-wrap:anywhere}
.user{background:#eef3ff}.bot{background:#f5f5f5}.error{background:#fff0f0}.who{font-weight:600;font-size:.85rem;color:#555}
figure{display:inline-block;margin:.5rem .5rem 0 0;vertical-align:top;max-width:20rem}img{max-width:100%;border-radius:.25rem}figcaption{font-size:.8rem;color:#555}`;

export function exportConversation(
  conversation: ConversationSummary,
  entries: readonly Entry[],
  imageData: (hash: string) => { contentType: string; data: Buffer } | undefined,
): string {
  const body = entries.map((e) => {
    const who = e.role === 'user' ? 'You' : e.kind === 'error' ? 'FROMAGe (error)' : 'FROMAGe';
    const parts = e.segments.map((s) => (s.type === 'text' ? `<div>${escapeHtml(s.text)}</div>` : s.images.map((i) => figure(i, imageData(i.hash))).join('')));
    return `<section class="e ${e.role}${e.kind === 'error' ? ' error' : ''}"><div class="who">${who} · ${escapeHtml(new Date(e.at).toISOString())}</div>${parts.join('')}</section>`;
  });
  return [
    '<!doctype html>',
    '<html lang="en"><head><meta charset="utf-8">',
    `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">`,
    `<title>${escapeHtml(conversation.title)} (FROMAGe)</title><style>${STYLE}</style></head><body>`,
    `<h1>${escapeHtml(conversation.title)}</h1>`,
    `<p>Saved from the FROMAGe web chat on ${escapeHtml(new Date().toISOString())}.</p>`,
    ...body,
    '</body></html>',
    '',
  ].join('\n');
}

function figure(image: ShownImage, stored: { contentType: string; data: Buffer } | undefined): string {
  const src = stored && /^image\/(png|jpeg|gif|webp)$/.test(stored.contentType) ? `data:${stored.contentType};base64,${stored.data.toString('base64')}` : '';
  const link = safeHttpUrl(image.source);
  const source = image.source ? (link ? `<a href="${escapeHtml(link)}" rel="noopener noreferrer">${escapeHtml(image.source)}</a>` : escapeHtml(image.source)) : escapeHtml(image.name);
  const score = image.score === undefined ? '' : ` · score ${image.score.toFixed(2)}`;
  return `<figure>${src ? `<img src="${src}" alt="${escapeHtml(image.alt)}">` : ''}<figcaption>${source}${score}</figcaption></figure>`;
}
