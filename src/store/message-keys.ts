/**
 * The stored side of MQTT redelivery detection (see src/sources/redelivery.ts): keys of
 * committed messages the broker may still send again, and the broker sessions edgehook
 * has had. Part of the outbox: keys are inserted in the transaction that commits what
 * their messages caused.
 *
 * Write cost: a key is inserted only by a commit that writes anyway (a reading that
 * changed nothing writes nothing, its key included). Released keys are deleted in the
 * next transaction the outbox commits for any reason (a commit, a delivery settled), or
 * by the outbox's own short-delayed write when none comes (RELEASE_DELAY_MS), so a
 * steady stream of alerts costs no extra transactions.
 *
 * The keys are few (only messages whose acknowledgement the broker has not yet
 * confirmed) and mirrored in memory, so checking them reads nothing from disk.
 */
import type { Database } from "better-sqlite3";
import type { SessionRecord } from "../sources/reading.js";

/**
 * How long released keys may wait for a transaction that happens anyway: readings that
 * change something a few seconds apart share it. Short, because a key still stored when
 * the process dies is taken for a message the broker may redeliver after the restart
 * (until the broker's replay shows otherwise); that could only mislead if the broker
 * also handed out 65,535 packet ids to us within this time.
 */
export const RELEASE_DELAY_MS = 5000;

export class MessageKeyStore {
  /** Keys in the table and not released. */
  readonly #stored = new Set<string>();
  /** Released, still in the table. */
  #releasing: string[] = [];
  /** Deleted / inserted by the transaction being written. */
  #deleting: string[] = [];
  #inserting: string[] = [];
  readonly #s;

  constructor(db: Database) {
    this.#s = {
      // One statement per batch of keys (a JSON array): a batch may hold thousands, and
      // each statement run from JavaScript costs more than SQLite's work for a key.
      insert: db.prepare("INSERT OR IGNORE INTO source_messages (key) SELECT value FROM json_each(?)"),
      delete: db.prepare("DELETE FROM source_messages WHERE key IN (SELECT value FROM json_each(?))"),
      all: db.prepare("SELECT key FROM source_messages").pluck(),
      session: db.prepare("SELECT broker_dropped FROM source_sessions WHERE scope = ?"),
      rememberSession: db.prepare(
        `INSERT INTO source_sessions (scope, since, broker_dropped) VALUES (?, ?, ?)
         ON CONFLICT (scope) DO UPDATE SET broker_dropped = excluded.broker_dropped`,
      ),
    };
    for (const k of this.#s.all.all() as string[]) this.#stored.add(k);
  }

  /** Keys stored and not released. */
  keys(): string[] {
    return [...this.#stored];
  }

  /** Marks stored keys for deletion; returns whether a write is now owed. */
  release(keys: readonly string[]): boolean {
    for (const k of keys) if (this.#stored.delete(k)) this.#releasing.push(k);
    return this.#releasing.length > 0;
  }

  /** Released keys wait for a transaction. */
  get owed(): boolean {
    return this.#releasing.length > 0;
  }

  // Inside a transaction of the outbox:

  /** Deletes the released keys (first, so a key stored again by the same transaction stays). */
  writeReleases(): void {
    this.#deleting = this.#releasing;
    this.#releasing = [];
    if (this.#deleting.length > 0) this.#s.delete.run(JSON.stringify(this.#deleting));
  }

  insert(keys: readonly string[]): void {
    if (keys.length === 0) return;
    this.#s.insert.run(JSON.stringify(keys));
    for (const k of keys) this.#inserting.push(k);
  }

  rememberSession(scope: string, record: SessionRecord, now: number): void {
    this.#s.rememberSession.run(scope, now, record.brokerDropped ?? null);
  }

  // After it:

  committed(): void {
    for (const k of this.#inserting) this.#stored.add(k);
    this.#inserting = [];
    this.#deleting = [];
  }

  rolledBack(): void {
    this.#releasing = this.#deleting.concat(this.#releasing);
    this.#deleting = [];
    this.#inserting = [];
  }

  session(scope: string): SessionRecord | undefined {
    const row = this.#s.session.get(scope) as { broker_dropped: number | null } | undefined;
    if (!row) return undefined;
    return row.broker_dropped === null ? {} : { brokerDropped: row.broker_dropped };
  }
}
