/**
 * The counter mirror. Memory does not grow with the backlog (invariant 6): counts live in
 * the `counts`/`totals` tables, updated in the same transactions as the rows (Delta,
 * written by connection.ts), recounted from the rows when the agent opens the outbox, and
 * mirrored in memory, so limits never need COUNT(*) per commit.
 *
 * Another process (`edgehook queue ...`) may open the same file while the agent runs
 * (WAL); PRAGMA data_version tells us when it changed something, and the mirror is then
 * reloaded (sync()).
 */
import type { Database } from "better-sqlite3";
import type { Logger } from "../ops/logger.js";
import { DEAD, DELIVERED, PENDING } from "./rows.js";

/** Rewrites the `counts`/`totals` tables from the rows (at open, and into a salvaged file). */
export const RECOUNT_SQL = `
  DELETE FROM counts;
  INSERT INTO counts (destination, state, n)
    SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state;
  UPDATE totals SET value = (SELECT COUNT(*) FROM events) WHERE key = 'events';
  UPDATE totals SET value = (SELECT COALESCE(SUM(size), 0) FROM events) WHERE key = 'bytes';
`;

/** Changes made by one transaction, applied to the counters when it committed. */
export class Delta {
  readonly counts = new Map<string, { destination: string; state: number; n: number }>();
  events = 0;
  bytes = 0;
  readonly drops: Record<string, number> = {};
  /** The same drops per destination: `reason\u0000destination` → n. */
  readonly dropsAt = new Map<string, number>();
  count(destination: string, state: number, n: number): void {
    const key = `${destination}\u0000${state}`;
    const c = this.counts.get(key);
    if (c) c.n += n;
    else this.counts.set(key, { destination, state, n });
  }
  /** `n` rows of `destination` moved from state `from` to state `to`. */
  move(destination: string, from: number, to: number, n: number): void {
    this.count(destination, from, -n);
    this.count(destination, to, n);
  }
  drop(reason: string, destination: string, n: number): void {
    if (!(n > 0)) return;
    this.drops[reason] = (this.drops[reason] ?? 0) + n;
    const key = `${reason}\u0000${destination}`;
    this.dropsAt.set(key, (this.dropsAt.get(key) ?? 0) + n);
  }
}

/** Per destination: deliveries [pending, delivered, dead]. */
export type StateCounts = [number, number, number];

export class Counters {
  readonly #db: Database;
  readonly #guard: <T>(fn: () => T) => T;
  readonly #s;
  /** Mirror of the `counts` table: destination → [pending, delivered, dead]. */
  readonly #counts = new Map<string, StateCounts>();
  #events = 0;
  #bytes = 0;
  #dataVersion = 0;

  /** `guard` records damage met while reading (damage.ts). */
  constructor(db: Database, guard: <T>(fn: () => T) => T) {
    this.#db = db;
    this.#guard = guard;
    this.#s = {
      counts: db.prepare("SELECT destination, state, n FROM counts"),
      totals: db.prepare("SELECT key, value FROM totals"),
      addCount: db.prepare(
        `INSERT INTO counts (destination, state, n) VALUES (?, ?, ?)
         ON CONFLICT (destination, state) DO UPDATE SET n = n + excluded.n`,
      ),
      addTotal: db.prepare("UPDATE totals SET value = value + ? WHERE key = ?"),
      dataVersion: db.prepare("PRAGMA data_version").pluck(),
    };
  }

  /** Stored events (one sent to two destinations counts once). */
  get events(): number {
    return this.#events;
  }

  /** Stored bytes as the limits count them (limits.ts, EVENT_OVERHEAD). */
  get bytes(): number {
    return this.#bytes;
  }

  /** Destination → [pending, delivered, dead], in no particular order. */
  entries(): IterableIterator<[string, StateCounts]> {
    return this.#counts.entries();
  }

  pending(destination: string): number {
    return this.#counts.get(destination)?.[PENDING] ?? 0;
  }

  totalPending(): number {
    let pending = 0;
    for (const c of this.#counts.values()) pending += c[PENDING];
    return pending;
  }

  totalSettled(): number {
    let settled = 0;
    for (const c of this.#counts.values()) settled += c[DELIVERED] + c[DEAD];
    return settled;
  }

  /**
   * Changes whenever another connection committed to the file (PRAGMA data_version); our
   * own commits leave it as it is.
   */
  dataVersion(): number {
    return this.#s.dataVersion.get() as number;
  }

  /** Reloads the mirror when another process (edgehook queue) changed the file. */
  sync(): void {
    this.#guard(() => {
      if (this.dataVersion() !== this.#dataVersion) this.load();
    });
  }

  load(): void {
    this.#counts.clear();
    for (const r of this.#s.counts.all() as { destination: string; state: number; n: number }[]) {
      this.#add(r.destination, r.state, r.n);
    }
    for (const r of this.#s.totals.all() as { key: string; value: number }[]) {
      if (r.key === "events") this.#events = r.value;
      if (r.key === "bytes") this.#bytes = r.value;
    }
    this.#dataVersion = this.dataVersion();
  }

  /**
   * Inside a transaction: rewrites the `counts`/`totals` tables from the rows; warns when
   * they had drifted. The agent recounts at start (one pass, like the integrity check
   * before it), so a counter that ever drifted cannot bend the limits for the rest of the run.
   */
  recount(log: Logger): void {
    const db = this.#db;
    const snapshot = () =>
      JSON.stringify([
        db.prepare("SELECT destination, state, n FROM counts WHERE n <> 0 ORDER BY destination, state").all(),
        this.#s.totals.all(),
      ]);
    const before = snapshot();
    db.exec(RECOUNT_SQL);
    const after = snapshot();
    if (before !== after) {
      log.warn({ before, after }, "outbox counters did not match the stored rows; recounted");
    }
  }

  /** Inside the transaction that made the changes: writes them to the tables. */
  persist(delta: Delta): void {
    for (const c of delta.counts.values()) {
      if (c.n !== 0) this.#s.addCount.run(c.destination, c.state, c.n);
    }
    if (delta.events !== 0) this.#s.addTotal.run(delta.events, "events");
    if (delta.bytes !== 0) this.#s.addTotal.run(delta.bytes, "bytes");
  }

  /** After that transaction committed: the mirror follows. */
  apply(delta: Delta): void {
    for (const c of delta.counts.values()) this.#add(c.destination, c.state, c.n);
    this.#events += delta.events;
    this.#bytes += delta.bytes;
  }

  #add(destination: string, state: number, n: number): void {
    const entry = this.#counts.get(destination) ?? [0, 0, 0];
    entry[state] = (entry[state] as number) + n;
    this.#counts.set(destination, entry);
  }
}
