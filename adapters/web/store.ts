/**
 * The conversations as the page shows them: every question and reply with its images, so a
 * reload or a restart shows the same page. The model's own history (HistoryStore) keeps only
 * what the prompt needs; this keeps what people saw, retrieved images included.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';

export interface ShownImage {
  /** sha256 hex of the bytes, the key of GET /api/images/:hash. */
  readonly hash: string;
  readonly contentType: string;
  /** File name as uploaded or retrieved (untrusted: shown as text). */
  readonly name: string;
  /** Alt text: the caption the model wrote before it, the query, or the file name. */
  readonly alt: string;
  /** Where a retrieved image came from (untrusted URL). */
  readonly source?: string;
  readonly score?: number;
  readonly width?: number;
  readonly height?: number;
}

export type ShownSegment = { readonly type: 'text'; readonly text: string } | { readonly type: 'images'; readonly images: readonly ShownImage[] };

export type EntryKind = 'message' | 'answer' | 'notice' | 'error' | 'busy';

export interface Entry {
  readonly id: number;
  /** Id of the user entry that started the exchange (its own id for user entries). */
  readonly exchange: number;
  readonly role: 'user' | 'bot';
  readonly kind: EntryKind;
  /** What the user asked for: chat, retrieve, reset, settings, help. */
  readonly intent: string;
  readonly segments: readonly ShownSegment[];
  /** Milliseconds since the epoch; for a user entry, the `receivedAt` the handler saved. */
  readonly at: number;
}

export interface ConversationSummary {
  readonly id: string;
  readonly title: string;
  readonly created: number;
  readonly updated: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS conversations (
  id TEXT PRIMARY KEY,
  title TEXT NOT NULL,
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  conversation TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
  exchange INTEGER NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('user', 'bot')),
  kind TEXT NOT NULL,
  intent TEXT NOT NULL,
  segments TEXT NOT NULL,
  at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_conversation ON entries (conversation, id);
CREATE TABLE IF NOT EXISTS images (
  hash TEXT PRIMARY KEY,
  content_type TEXT NOT NULL,
  data BLOB NOT NULL
);
`;

export const NEW_TITLE = 'New conversation';

export class TranscriptStore {
  private readonly db: Database.Database;

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('foreign_keys = ON');
    this.db.exec(SCHEMA);
  }

  list(): ConversationSummary[] {
    return this.db.prepare('SELECT id, title, created, updated FROM conversations ORDER BY updated DESC, rowid DESC').all() as ConversationSummary[];
  }

  get(id: string): ConversationSummary | undefined {
    return this.db.prepare('SELECT id, title, created, updated FROM conversations WHERE id = ?').get(id) as ConversationSummary | undefined;
  }

  create(now = Date.now()): ConversationSummary {
    const c = { id: randomBytes(9).toString('base64url'), title: NEW_TITLE, created: now, updated: now };
    this.db.prepare('INSERT INTO conversations (id, title, created, updated) VALUES (@id, @title, @created, @updated)').run(c);
    return c;
  }

  entries(conversation: string): Entry[] {
    const rows = this.db
      .prepare('SELECT id, exchange, role, kind, intent, segments, at FROM entries WHERE conversation = ? ORDER BY id')
      .all(conversation) as (Omit<Entry, 'segments'> & { segments: string })[];
    return rows.map((r) => ({ ...r, segments: JSON.parse(r.segments) as ShownSegment[] }));
  }

  /** A user entry starts an exchange; the first one with text names the conversation. */
  addUserEntry(conversation: string, intent: string, segments: readonly ShownSegment[], at: number): Entry {
    return this.db.transaction(() => {
      const { lastInsertRowid } = this.db
        .prepare("INSERT INTO entries (conversation, exchange, role, kind, intent, segments, at) VALUES (?, 0, 'user', 'message', ?, ?, ?)")
        .run(conversation, intent, JSON.stringify(segments), at);
      const id = Number(lastInsertRowid);
      this.db.prepare('UPDATE entries SET exchange = id WHERE id = ?').run(id);
      // Questions name a conversation; commands (/settings, /reset) do not.
      const text = intent === 'chat' || intent === 'retrieve' ? segments.flatMap((s) => (s.type === 'text' ? [s.text] : [])).join(' ').replace(/^\/retrieve\s+/, '').trim() : '';
      this.db
        .prepare('UPDATE conversations SET updated = ?, title = CASE WHEN title = ? AND ? <> \'\' THEN ? ELSE title END WHERE id = ?')
        .run(at, NEW_TITLE, text, titleFrom(text), conversation);
      return { id, exchange: id, role: 'user', kind: 'message', intent, segments, at } satisfies Entry;
    })();
  }

  addBotEntry(conversation: string, exchange: number, kind: EntryKind, intent: string, segments: readonly ShownSegment[], at = Date.now()): Entry {
    const { lastInsertRowid } = this.db
      .prepare("INSERT INTO entries (conversation, exchange, role, kind, intent, segments, at) VALUES (?, ?, 'bot', ?, ?, ?, ?)")
      .run(conversation, exchange, kind, intent, JSON.stringify(segments), at);
    this.db.prepare('UPDATE conversations SET updated = ? WHERE id = ?').run(at, conversation);
    return { id: Number(lastInsertRowid), exchange, role: 'bot', kind, intent, segments, at };
  }

  /** Removes the newest exchange; returns its user entry (for the model history's undo), if any. */
  dropLastExchange(conversation: string): Entry | undefined {
    return this.db.transaction(() => {
      const last = this.db.prepare('SELECT MAX(exchange) AS exchange FROM entries WHERE conversation = ?').get(conversation) as { exchange: number | null };
      if (last.exchange === null) return undefined;
      const first = this.entries(conversation).find((e) => e.id === last.exchange);
      this.db.prepare('DELETE FROM entries WHERE conversation = ? AND exchange = ?').run(conversation, last.exchange);
      this.collectImages();
      return first;
    })();
  }

  /** Removes the conversation, its entries and the images only it showed. */
  delete(conversation: string): boolean {
    return this.db.transaction(() => {
      this.db.prepare('DELETE FROM entries WHERE conversation = ?').run(conversation);
      const { changes } = this.db.prepare('DELETE FROM conversations WHERE id = ?').run(conversation);
      this.collectImages();
      return changes > 0;
    })();
  }

  clear(conversation: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM entries WHERE conversation = ?').run(conversation);
      this.collectImages();
    })();
  }

  putImage(hash: string, contentType: string, data: Buffer): void {
    this.db.prepare('INSERT OR IGNORE INTO images (hash, content_type, data) VALUES (?, ?, ?)').run(hash, contentType, data);
  }

  image(hash: string): { contentType: string; data: Buffer } | undefined {
    const row = this.db.prepare('SELECT content_type AS contentType, data FROM images WHERE hash = ?').get(hash) as { contentType: string; data: Buffer } | undefined;
    return row;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** Images no entry shows any more (after undo or reset). */
  private collectImages(): void {
    const used = new Set<string>();
    for (const row of this.db.prepare('SELECT segments FROM entries').iterate() as Iterable<{ segments: string }>)
      for (const s of JSON.parse(row.segments) as ShownSegment[]) if (s.type === 'images') for (const i of s.images) used.add(i.hash);
    const all = this.db.prepare('SELECT hash FROM images').all() as { hash: string }[];
    const drop = this.db.prepare('DELETE FROM images WHERE hash = ?');
    for (const { hash } of all) if (!used.has(hash)) drop.run(hash);
  }
}

function titleFrom(text: string): string {
  const line = text.split('\n')[0].trim();
  return line.length > 48 ? `${line.slice(0, 47)}…` : line;
}
