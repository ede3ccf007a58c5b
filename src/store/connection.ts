/**
 * One open outbox database as its parts share it: the handle, the counter mirror, the
 * stored message keys, and the one way to write. Every write of the outbox goes through
 * write(): one IMMEDIATE transaction that also writes the counter changes and the released
 * message keys, after which the mirror follows, or, when it failed, nothing does and damage
 * is noted. Each part prepares its own statements on `db` once, when the outbox opens.
 */
import type { Database } from "better-sqlite3";
import type { Logger } from "../ops/logger.js";
import { Counters, Delta } from "./counters.js";
import type { DamageWatch } from "./damage.js";
import { MessageKeyStore } from "./message-keys.js";

export class OutboxConnection {
  readonly db: Database;
  readonly counters: Counters;
  /** Keys of committed MQTT messages the broker may still redeliver (message-keys.ts). */
  readonly messageKeys: MessageKeyStore;
  readonly #damage: DamageWatch;
  readonly #tx: (fn: () => unknown) => unknown;
  readonly #committed: (delta: Delta) => void;
  /**
   * Counts write transactions of this connection (committed or not): what was read from the
   * file before one may be stale after it (heads.ts caches successors of series until then).
   */
  writes = 0;
  /** Writes that ride on every transaction (the delivery outcomes waiting to be written). */
  #rider: ((delta: Delta) => Rider | undefined) | undefined;

  /** `committed` hears of every transaction that committed, with what it changed. */
  constructor(db: Database, damage: DamageWatch, committed: (delta: Delta) => void) {
    this.db = db;
    this.#damage = damage;
    this.#committed = committed;
    this.counters = new Counters(db, (fn) => damage.guard(fn));
    this.messageKeys = new MessageKeyStore(db);
    const tx = db.transaction((fn: () => unknown) => fn());
    // IMMEDIATE takes the write lock up front, so busy_timeout applies instead of a
    // deferred read turning into SQLITE_BUSY when another process writes.
    this.#tx = (fn) => tx.immediate(fn);
  }

  /** Recounts the counters from the rows (`check`), then loads the mirror. */
  start(check: boolean, log: Logger): void {
    if (check) this.#tx(() => this.counters.recount(log));
    this.counters.load();
  }

  /** Runs fn; a database error that means damage is recorded before it is rethrown. */
  guard<T>(fn: () => T): T {
    return this.#damage.guard(fn);
  }

  /**
   * Inside each write transaction, before its own work, `write` may add to it (and says what
   * to call once the transaction committed or failed).
   */
  carry(write: ((delta: Delta) => Rider | undefined) | undefined): void {
    this.#rider = write;
  }

  /** Runs fn in one IMMEDIATE transaction; counters follow only if it committed. */
  write<T>(fn: (delta: Delta) => T): T {
    this.counters.sync();
    const delta = new Delta();
    const keys = this.messageKeys;
    let result: T;
    let rider: Rider | undefined;
    this.writes++;
    try {
      result = this.#tx(() => {
        // Released message keys and waiting delivery outcomes ride on whatever this
        // transaction is for.
        keys.writeReleases();
        rider = this.#rider?.(delta);
        const r = fn(delta);
        this.counters.persist(delta);
        return r;
      }) as T;
    } catch (err) {
      keys.rolledBack();
      rider?.rolledBack();
      this.#damage.note(err);
      throw err;
    }
    keys.committed();
    this.counters.apply(delta);
    this.#committed(delta);
    rider?.committed();
    return result;
  }
}

/** What a write that rode on a transaction is told when it ended. */
export interface Rider {
  committed(): void;
  rolledBack(): void;
}
