/**
 * Per-conversation dialogue history. SQLite (WAL) by default so conversations survive restarts;
 * in-memory for tests. Images are stored as their normalized bytes (platform URLs expire),
 * deduplicated by hash.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { settingsChangesSchema } from './settings.ts';
import { DEFAULT_SETTINGS, type ConversationSettings } from './types.ts';

export interface StoredImage {
  /** sha256 hex of `data`. */
  readonly hash: string;
  /** Normalized PNG bytes (see images.ts). */
  readonly data: Buffer;
}

export interface Turn {
  readonly role: 'user' | 'bot';
  /** User: the question as typed. Bot: the answer's text outputs joined by spaces. */
  readonly text: string;
  readonly images: readonly StoredImage[];
  /** Milliseconds since the epoch. */
  readonly at: number;
}

export interface HistoryStore {
  /** Oldest first. */
  turns(conversation: string): Turn[];
  append(conversation: string, ...turns: Turn[]): void;
  reset(conversation: string): void;
  /**
   * Drops the last exchange: the last user turn and every turn after it (the demo's "Undo").
   * With `userTurnAt`, only when the last user turn was written at that time, so an undo never
   * removes an older exchange when the newest one was not saved (an error, a reset).
   * Returns the number of turns removed.
   */
  dropLastExchange(conversation: string, userTurnAt?: number): number;
  settings(conversation: string): ConversationSettings;
  updateSettings(conversation: string, changes: Partial<ConversationSettings>): ConversationSettings;
  close(): void;
}

export interface HistoryOptions {
  /** Turns kept per conversation; older ones are deleted on append. */
  readonly maxTurns: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS turns (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  conversation TEXT NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('user', 'bot')),
  text TEXT NOT NULL,
  at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (conversation, id);
CREATE TABLE IF NOT EXISTS images (
  hash TEXT PRIMARY KEY,
  data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS turn_images (
  turn_id INTEGER NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  hash TEXT NOT NULL REFERENCES images (hash),
  PRIMARY KEY (turn_id, position)
);
CREATE TABLE IF NOT EXISTS settings (
  conversation TEXT PRIMARY KEY,
  json TEXT NOT NULL
);
`;

export class SqliteHistoryStore implements HistoryStore {
  private readonly db: Database.Database;

  /** `path` may be `:memory:`. */
  constructor(
    path: string,
    private readonly options: HistoryOptions,
  ) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(SCHEMA);
  }

  turns(conversation: string): Turn[] {
    const rows = this.db
      .prepare('SELECT id, role, text, at FROM turns WHERE conversation = ? ORDER BY id')
      .all(conversation) as { id: number; role: 'user' | 'bot'; text: string; at: number }[];
    const imagesOf = this.db.prepare(
      'SELECT i.hash AS hash, i.data AS data FROM turn_images t JOIN images i ON i.hash = t.hash WHERE t.turn_id = ? ORDER BY t.position',
    );
    return rows.map((r) => ({
      role: r.role,
      text: r.text,
      at: r.at,
      images: (imagesOf.all(r.id) as { hash: string; data: Buffer }[]).map((i) => ({ hash: i.hash, data: i.data })),
    }));
  }

  append(conversation: string, ...turns: Turn[]): void {
    const insertTurn = this.db.prepare('INSERT INTO turns (conversation, role, text, at) VALUES (?, ?, ?, ?)');
    const insertImage = this.db.prepare('INSERT OR IGNORE INTO images (hash, data) VALUES (?, ?)');
    const link = this.db.prepare('INSERT INTO turn_images (turn_id, position, hash) VALUES (?, ?, ?)');
    this.db.transaction(() => {
      for (const turn of turns) {
        const { lastInsertRowid } = insertTurn.run(conversation, turn.role, turn.text, turn.at);
        turn.images.forEach((img, position) => {
          insertImage.run(img.hash, img.data);
          link.run(lastInsertRowid, position, img.hash);
        });
      }
      this.enforceRetention(conversation);
    })();
  }

  reset(conversation: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM turns WHERE conversation = ?').run(conversation);
      this.collectImages();
    })();
  }

  dropLastExchange(conversation: string, userTurnAt?: number): number {
    return this.db.transaction(() => {
      const last = this.db
        .prepare("SELECT id, at FROM turns WHERE conversation = ? AND role = 'user' ORDER BY id DESC LIMIT 1")
        .get(conversation) as { id: number; at: number } | undefined;
      if (!last || (userTurnAt !== undefined && last.at !== userTurnAt)) return 0;
      const { changes } = this.db.prepare('DELETE FROM turns WHERE conversation = ? AND id >= ?').run(conversation, last.id);
      this.collectImages();
      return changes;
    })();
  }

  settings(conversation: string): ConversationSettings {
    const row = this.db.prepare('SELECT json FROM settings WHERE conversation = ?').get(conversation) as { json: string } | undefined;
    if (!row) return DEFAULT_SETTINGS;
    // Stored by an older version or edited by hand: keep what still validates.
    let stored: unknown;
    try {
      stored = JSON.parse(row.json);
    } catch {
      return DEFAULT_SETTINGS;
    }
    const kept: Record<string, unknown> = {};
    if (stored && typeof stored === 'object')
      for (const [key, value] of Object.entries(stored)) {
        const one = settingsChangesSchema.safeParse({ [key]: value });
        if (one.success) Object.assign(kept, one.data);
      }
    return { ...DEFAULT_SETTINGS, ...kept };
  }

  updateSettings(conversation: string, changes: Partial<ConversationSettings>): ConversationSettings {
    const next = { ...this.settings(conversation), ...stripUndefined(changes) };
    this.db
      .prepare('INSERT INTO settings (conversation, json) VALUES (?, ?) ON CONFLICT (conversation) DO UPDATE SET json = excluded.json')
      .run(conversation, JSON.stringify(next));
    return next;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  private enforceRetention(conversation: string): void {
    const { changes } = this.db
      .prepare(
        `DELETE FROM turns WHERE conversation = ? AND id NOT IN (
           SELECT id FROM turns WHERE conversation = ? ORDER BY id DESC LIMIT ?)`,
      )
      .run(conversation, conversation, this.options.maxTurns);
    if (changes > 0) this.collectImages();
  }

  private collectImages(): void {
    this.db.prepare('DELETE FROM images WHERE hash NOT IN (SELECT hash FROM turn_images)').run();
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
