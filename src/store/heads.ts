/**
 * Series heads and the dispatcher's side of the outbox (OutboxReader).
 *
 * Order (invariant 5): within one (destination, series) the delivery with the lowest id
 * that is still pending is the series "head" (is_head = 1, at most one, enforced by a
 * unique partial index). Only heads are handed out; a head in backoff blocks its series,
 * other series go on. Heads are maintained on enqueue (enqueue.ts marks a series' first
 * pending row) and, through fix(), on settle, drop and expiry (limits.ts) and replay
 * (operator.ts), so next() reads a small index instead of scanning the backlog.
 */
import type { Clock } from "../clock.js";
import { checkBody } from "./body-check.js";
import type { OutboxConnection } from "./connection.js";
import type { Delta } from "./counters.js";
import { appendHistory, clip, DEAD, DELIVERED, PENDING, SeriesSet } from "./rows.js";
import type { Delivery, OutboxReader, Settlement } from "./types.js";

interface NextRow {
  id: number;
  event_seq: number;
  destination: string;
  series: string;
  priority: number;
  attempts: number;
  created_at: number;
  next_at: number;
}

interface EventRow {
  id: string;
  type: string;
  body: Buffer;
  body_crc: number | null;
}

/**
 * Pending deliveries of a series after delivery `from`, in id order, as read from the file (up
 * to SUCCESSORS_READ); `complete`: there are no more.
 */
interface Successors {
  from: number;
  rows: NextRow[];
  complete: boolean;
}

/**
 * How many pending deliveries of a series one successor lookup reads: a busy series goes on
 * past several unwritten outcomes between two writes, one row each.
 */
const SUCCESSORS_READ = 8;

/** What next() read for one destination, valid until the file changes (see #cached). */
interface DestinationCache {
  /** Series → the deliveries after its settled-but-unwritten head. */
  successors: Map<string, Successors>;
  /**
   * The first due heads in queue order as read at `now`; `complete`: every due head. They stay
   * the due heads until a write, or until `until`: the earliest head not yet due then.
   */
  heads: { rows: NextRow[]; now: number; until: number; complete: boolean } | undefined;
}

export class SeriesHeads implements OutboxReader {
  readonly #conn: OutboxConnection;
  readonly #clock: Clock;
  readonly #s;
  /**
   * What next() read per destination (the due heads, successors), kept until the file
   * changes: any write of ours (conn.writes) or of another process (PRAGMA data_version). A
   * busy lane passes many times while its outcomes wait to be written (up to 50 ms), and
   * without this read the same heads, and a successor per released series, on every pass.
   * Bounded by the heads one call may need and SUCCESSORS_READ rows per series a lane holds
   * in `after`.
   */
  readonly #cache = new Map<string, DestinationCache>();
  #cacheAt = -1;
  #cacheVersion = -1;

  constructor(conn: OutboxConnection, clock: Clock) {
    this.#conn = conn;
    this.#clock = clock;
    const db = conn.db;
    this.#s = {
      firstPending: db
        .prepare("SELECT id FROM deliveries WHERE destination = ? AND series = ? AND state = 0 ORDER BY id LIMIT 1")
        .pluck(),
      headOf: db.prepare("SELECT id FROM deliveries WHERE destination = ? AND series = ? AND is_head = 1").pluck(),
      setHead: db.prepare("UPDATE deliveries SET is_head = ? WHERE id = ?"),
      // The earliest pending row of a series that has no head becomes it (one statement).
      promote: db.prepare(
        `UPDATE deliveries SET is_head = 1 WHERE id =
           (SELECT id FROM deliveries WHERE destination = ? AND series = ? AND state = 0 ORDER BY id LIMIT 1)`,
      ),
      // Walks the heads in priority/id order and stops after LIMIT due ones; without the
      // hint SQLite prefers the next_at index and sorts every due head (10,000 series).
      // Bodies are read only for the heads handed out (eventOf): most heads a busy lane sees
      // are in flight and skipped. Each is checked against its checksum (body-check.ts).
      next: db.prepare(
        `SELECT d.id, d.event_seq, d.destination, d.series, d.priority, d.attempts, d.created_at, d.next_at
         FROM deliveries d INDEXED BY deliveries_next_heads
         WHERE d.destination = ? AND d.is_head = 1 AND d.next_at <= ?
         ORDER BY d.priority DESC, d.id LIMIT ?`,
      ),
      eventOf: db.prepare("SELECT id, type, body, body_crc FROM events WHERE seq = ?"),
      nextDueAt: db.prepare("SELECT MIN(next_at) FROM deliveries WHERE destination = ? AND is_head = 1").pluck(),
      // The earliest head not due yet (deliveries_next_due).
      dueAfter: db
        .prepare("SELECT MIN(next_at) FROM deliveries WHERE destination = ? AND is_head = 1 AND next_at > ?")
        .pluck(),
      // The pending deliveries of a series after a given one (deliveries_pending_by_series).
      nextInSeries: db.prepare(
        `SELECT id, event_seq, destination, series, priority, attempts, created_at, next_at FROM deliveries
         WHERE destination = ? AND series = ? AND state = 0 AND id > ? ORDER BY id LIMIT ?`,
      ),
      // Only heads are ever retried, so only heads can wait (deliveries_next_due).
      retryNow: db.prepare("UPDATE deliveries SET next_at = ? WHERE destination = ? AND is_head = 1 AND next_at > ?"),
      forSettle: db.prepare("SELECT destination, series, state, is_head, history FROM deliveries WHERE id = ?"),
      markSettled: db.prepare(
        `UPDATE deliveries SET state = ?, is_head = 0, settled_at = ?, attempts = attempts + ?, last_status = ?,
           last_error = ?, reason = ?, history = ? WHERE id = ?`,
      ),
      markRetry: db.prepare(
        `UPDATE deliveries SET next_at = ?, attempts = attempts + ?, last_status = ?, last_error = ?, history = ?
         WHERE id = ?`,
      ),
    };
  }

  next(
    destination: string,
    now: number,
    limit: number,
    exclude: ReadonlySet<string>,
    after?: ReadonlyMap<string, number>,
  ): Delivery[] {
    if (limit <= 0) return [];
    // Reads bodies from the file: where damage met while running shows first (guard), be it
    // SQLITE_CORRUPT or a body that fails its checksum; then nothing of the call is handed out.
    return this.#conn.guard(() => {
      const s = this.#s;
      // In-flight rows are at most one per series and are heads, so limit + |exclude| is
      // enough; a series in `after` is replaced by its successor or skipped.
      const need = limit + exclude.size + (after?.size ?? 0);
      const cache = this.#cached(destination);
      const rows = this.#dueHeads(cache, destination, now, need);
      const picked: NextRow[] = [];
      let successors = false;
      for (let i = 0; i < rows.length && i < need; i++) {
        const head = rows[i] as NextRow;
        if (exclude.has(head.series) || (exclude.size > 0 && exclude.has(String(head.id)))) continue;
        const settled = after?.get(head.series);
        if (settled !== undefined && head.id <= settled) {
          // The head's outcome is known to the caller but not written yet: the series goes
          // on with the first pending delivery after it, if that one is due.
          const succ = this.#successor(cache, destination, head.series, settled);
          if (succ !== undefined && succ.next_at <= now) {
            picked.push(succ);
            successors = true;
          }
          continue;
        }
        picked.push(head);
        if (!successors && picked.length >= limit) break;
      }
      // A successor is younger than the head it replaces: in queue order (priority, then age)
      // it goes after older events of other series, so a busy series does not jump the queue.
      if (successors) picked.sort((a, b) => b.priority - a.priority || a.id - b.id);
      const out: Delivery[] = [];
      for (const r of picked) {
        const e = s.eventOf.get(r.event_seq) as EventRow | undefined;
        if (e === undefined) continue;
        checkBody(e.id, e.body, e.body_crc);
        out.push({
          id: r.id,
          eventId: e.id,
          destination: r.destination,
          series: r.series,
          type: e.type,
          priority: r.priority,
          attempts: r.attempts,
          createdAt: r.created_at,
          body: e.body,
        });
        if (out.length >= limit) break;
      }
      return out;
    });
  }

  /** The first pending delivery of a series after `settled`, from what was read when it can tell. */
  #successor(cache: DestinationCache, destination: string, series: string, settled: number): NextRow | undefined {
    const known = cache.successors.get(series);
    if (known !== undefined && known.from <= settled) {
      for (const r of known.rows) if (r.id > settled) return r;
      if (known.complete) return undefined;
    }
    const rows = this.#s.nextInSeries.all(destination, series, settled, SUCCESSORS_READ) as NextRow[];
    cache.successors.set(series, { from: settled, rows, complete: rows.length < SUCCESSORS_READ });
    return rows[0];
  }

  /** What next() read for a destination, all of it dropped first if the file changed since. */
  #cached(destination: string): DestinationCache {
    const writes = this.#conn.writes;
    const version = this.#conn.counters.dataVersion();
    if (writes !== this.#cacheAt || version !== this.#cacheVersion) {
      this.#cache.clear();
      this.#cacheAt = writes;
      this.#cacheVersion = version;
    }
    let c = this.#cache.get(destination);
    if (c === undefined) {
      c = { successors: new Map(), heads: undefined };
      this.#cache.set(destination, c);
    }
    return c;
  }

  /**
   * At least `need` due heads in queue order (fewer when there are no more), read again only
   * when the cached ones may be stale: the file changed (#cached), the clock went back, a
   * head not due then is due now, or more are needed than were read.
   */
  #dueHeads(cache: DestinationCache, destination: string, now: number, need: number): NextRow[] {
    const h = cache.heads;
    if (h !== undefined && now >= h.now && now < h.until && (h.complete || h.rows.length >= need)) return h.rows;
    // Twice what is needed: the need grows while outcomes wait (`after`), and one read then
    // serves the passes until the next write.
    const n = Math.max(2 * need, 64);
    const rows = this.#s.next.all(destination, now, n) as NextRow[];
    const until = (this.#s.dueAfter.get(destination, now) as number | null) ?? Number.POSITIVE_INFINITY;
    cache.heads = { rows, now, until, complete: rows.length < n };
    return rows;
  }

  nextDueAt(destination: string): number | undefined {
    const at = this.#conn.guard(() => this.#s.nextDueAt.get(destination) as number | null);
    return at ?? undefined;
  }

  retryNow(destination: string, now: number): number {
    this.#cache.clear();
    return this.#s.retryNow.run(now, destination, now).changes;
  }

  /** True when a delivery of this series waits for this destination. */
  hasPending(destination: string, series: string): boolean {
    return this.#conn.guard(() => this.#s.firstPending.get(destination, series) !== undefined);
  }

  pendingCount(destination: string): number {
    this.#conn.counters.sync();
    return this.#conn.counters.pending(destination);
  }

  settle(settlements: Settlement[]): void {
    if (settlements.length === 0) return;
    this.#conn.write((delta) => this.settleIn(settlements, delta));
  }

  /** Inside a write: records the outcomes. */
  settleIn(settlements: readonly Settlement[], delta: Delta): void {
    const s = this.#s;
    const now = this.#clock.now();
    // Series whose head was settled: the next pending row becomes head once, after the loop
    // (a batch often settles several deliveries of one series in a row).
    const headless = new SeriesSet();
    for (const st of settlements) {
      const row = s.forSettle.get(st.id) as
        | { destination: string; series: string; state: number; is_head: number; history: string | null }
        | undefined;
      // Already settled, dropped or purged meanwhile: nothing to record.
      if (!row || row.state !== PENDING) continue;
      const history = appendHistory(row.history, st.attempt);
      const error = st.attempt.error === undefined ? null : clip(st.attempt.error);
      const status = st.attempt.status ?? null;
      if (st.outcome === "retry") {
        s.markRetry.run(st.nextAt, st.counted ? 1 : 0, status, error, history, st.id);
        continue;
      }
      const state = st.outcome === "delivered" ? DELIVERED : DEAD;
      const reason = st.outcome === "dead" ? clip(st.reason) : null;
      s.markSettled.run(state, now, 1, status, error, reason, history, st.id);
      delta.move(row.destination, PENDING, state, 1);
      // Settling a row other than the head leaves the earliest pending row (the head) as it is.
      if (row.is_head === 1) headless.add(row.destination, row.series);
    }
    for (const [destination, series] of headless) s.promote.run(destination, series);
  }

  /** Inside a write: makes the earliest pending row of (destination, series) its only head. */
  fix(destination: string, series: string): void {
    const s = this.#s;
    const first = s.firstPending.get(destination, series) as number | undefined;
    const current = s.headOf.get(destination, series) as number | undefined;
    if (first === current) return;
    if (current !== undefined) s.setHead.run(0, current);
    if (first !== undefined) s.setHead.run(1, first);
  }

  /** fix() for every pair of the set. */
  fixAll(pairs: SeriesSet): void {
    for (const [destination, series] of pairs) this.fix(destination, series);
  }
}
