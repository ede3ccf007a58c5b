/**
 * Limits, drops and retention: what happens when a limit is reached (invariant 6), the
 * stated policy.
 *
 * - max_age (destination max_age, else outbox.max_age): a pending delivery older than
 *   this (by created_at) becomes dead with reason `expired`, counted as
 *   drops{reason="expired"}. Runs in maintain().
 * - max_events (stored events; one event sent to two destinations counts once) and
 *   max_bytes (body bytes plus a fixed allowance per event and per delivery for columns and
 *   indexes, see EVENT_OVERHEAD): checked after every committed batch (enqueue.ts) against
 *   the counter mirror (counters.ts), and in maintain(). When over:
 *     1. delivered rows are pruned, oldest settled first (not counted as drops);
 *     2. dead rows are pruned, oldest settled first (drops{reason="dead_pruned"});
 *     3. pending deliveries are dropped, LOWEST priority first and oldest first
 *        within it (drops{reason="max_events"|"max_bytes"}).
 *   Every drop is counted and logged (drop-report.ts). At most MAINTAIN_MAX_ROWS rows go
 *   per commit or pass, so a limit lowered on a full outbox is reached over a few passes
 *   (maintain() says `more`) rather than in one long block.
 *   That is `when_full: drop_oldest` (the default). With `when_full: block` step 3 never
 *   happens: once a limit is reached (after steps 1 and 2), the outbox refuses new groups
 *   instead (refusal.ts).
 * - keep_delivered: delivered rows are pruned this long after delivery; dead rows are
 *   pruned outbox.max_age after they died. Runs in maintain(), at most
 *   MAINTAIN_MAX_ROWS rows per pass so one pass never blocks the event loop for long.
 *
 * No query here loads more than a bounded batch of rows (BATCH_ROWS).
 */
import type { Clock } from "../clock.js";
import type { OutboxConfig } from "../config/schema.js";
import type { OutboxConnection } from "./connection.js";
import type { Delta } from "./counters.js";
import type { SeriesHeads } from "./heads.js";
import { BATCH_ROWS, DEAD, DELIVERED, PENDING, SeriesSet } from "./rows.js";
import type { MaintainResult } from "./types.js";

/** The `outbox` settings; `when_full` defaults to drop_oldest. */
export type OutboxLimits = Omit<OutboxConfig, "when_full"> & { when_full?: OutboxConfig["when_full"] };

/** Bytes counted per stored event on top of its body (row, id index). */
export const EVENT_OVERHEAD = 160;
/** Bytes counted per delivery row (row and its index entries). */
export const DELIVERY_OVERHEAD = 200;
/** Rows pruned/expired per maintain() pass. */
export const MAINTAIN_MAX_ROWS = 20_000;

/** A delivery row on its way out: pruned, dropped. */
interface RemovedRow {
  id: number;
  event_seq: number;
  destination: string;
}

export class Retention {
  readonly #conn: OutboxConnection;
  readonly #heads: SeriesHeads;
  readonly #limits: OutboxLimits;
  readonly #clock: Clock;
  readonly #maxAge: () => Readonly<Record<string, number>>;
  readonly #s;

  /** `maxAge`: the per-destination max_age overrides as they are now (a reload changes them). */
  constructor(options: {
    conn: OutboxConnection;
    heads: SeriesHeads;
    limits: OutboxLimits;
    clock: Clock;
    maxAge: () => Readonly<Record<string, number>>;
  }) {
    this.#conn = options.conn;
    this.#heads = options.heads;
    this.#limits = options.limits;
    this.#clock = options.clock;
    this.#maxAge = options.maxAge;
    const db = options.conn.db;
    this.#s = {
      // Pruning settled rows: oldest settled first. The `state <> 0` term lets SQLite use the partial index.
      settledBefore: db.prepare(
        `SELECT id, event_seq, destination FROM deliveries
         WHERE state <> 0 AND state = ? AND settled_at < ? ORDER BY settled_at LIMIT ?`,
      ),
      deleteDelivery: db.prepare("DELETE FROM deliveries WHERE id = ?"),
      deleteOrphanEvent: db
        .prepare(
          "DELETE FROM events WHERE seq = ? AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?) RETURNING size",
        )
        .pluck(),
      priorityAbove: db
        .prepare("SELECT priority FROM deliveries WHERE state = 0 AND priority > ? ORDER BY priority LIMIT 1")
        .pluck(),
      expiring: db.prepare(
        `SELECT id, series FROM deliveries
         WHERE state = 0 AND priority = ? AND destination = ? AND created_at < ? LIMIT ?`,
      ),
      markExpired: db.prepare(
        "UPDATE deliveries SET state = 2, is_head = 0, settled_at = ?, reason = 'expired' WHERE id = ?",
      ),
      oldestOfPriority: db.prepare(
        `SELECT id, event_seq, destination, series, is_head, created_at FROM deliveries
         WHERE state = 0 AND priority = ? AND destination = ? ORDER BY created_at LIMIT ?`,
      ),
    };
  }

  /**
   * Prunes old settled rows, expires pending rows past max_age and enforces max_events and
   * max_bytes. Call on a timer (e.g. every 30 s) and again soon when the result says `more`.
   */
  maintain(): MaintainResult {
    const result: MaintainResult = { pruned: 0, expired: 0, dropped: {}, more: false };
    this.#conn.counters.sync();
    const now = this.#clock.now();
    let budget = MAINTAIN_MAX_ROWS;
    const prune = (state: number, cutoff: number) => {
      while (budget > 0) {
        const n = this.#conn.write((delta) => this.deleteSettled(state, cutoff, Math.min(BATCH_ROWS, budget), delta));
        result.pruned += n;
        budget -= n;
        if (n === 0) return;
      }
      result.more = true;
    };
    prune(DELIVERED, now - this.#limits.keep_delivered);
    prune(DEAD, now - this.#limits.max_age);
    if (budget > 0) {
      const { expired, more } = this.#expire(now, budget);
      result.expired = expired;
      result.more ||= more;
    } else {
      result.more = true;
    }
    if (this.overLimit()) {
      const { drops, over } = this.#conn.write((delta) => {
        const stillOver = this.enforce(delta);
        return { drops: { ...delta.drops }, over: stillOver };
      });
      result.dropped = drops;
      result.more ||= over;
    }
    return result;
  }

  #expire(now: number, budget: number): { expired: number; more: boolean } {
    const s = this.#s;
    const maxAge = this.#maxAge();
    let expired = 0;
    const destinations = [...this.#conn.counters.entries()].filter(([, c]) => c[PENDING] > 0).map(([d]) => d);
    for (const destination of destinations) {
      const cutoff = now - (maxAge[destination] ?? this.#limits.max_age);
      let priority = Number.MIN_SAFE_INTEGER;
      for (;;) {
        const p = s.priorityAbove.get(priority) as number | undefined;
        if (p === undefined) break;
        priority = p;
        for (;;) {
          if (budget <= 0) return { expired, more: true };
          const n = this.#conn.write((delta) => {
            const rows = s.expiring.all(p, destination, cutoff, Math.min(BATCH_ROWS, budget)) as {
              id: number;
              series: string;
            }[];
            const series = new SeriesSet();
            for (const r of rows) {
              s.markExpired.run(now, r.id);
              series.add(destination, r.series);
            }
            this.#heads.fixAll(series);
            delta.move(destination, PENDING, DEAD, rows.length);
            delta.drop("expired", destination, rows.length);
            return rows.length;
          });
          expired += n;
          budget -= n;
          if (n === 0) break;
        }
      }
    }
    return { expired, more: false };
  }

  /** Over max_events or max_bytes, with the changes of the transaction under way if given. */
  overLimit(delta?: Delta): boolean {
    const events = this.#conn.counters.events + (delta?.events ?? 0);
    const bytes = this.#conn.counters.bytes + (delta?.bytes ?? 0);
    return events > this.#limits.max_events || bytes > this.#limits.max_bytes;
  }

  /**
   * Inside a write transaction: prunes, then drops, until back under both limits or
   * MAINTAIN_MAX_ROWS rows went (a lowered limit on a full outbox converges over a few
   * passes instead of blocking the event loop for seconds). True when still over.
   * With when_full: block pending deliveries are never dropped (step 3 is skipped: new
   * events are refused instead). `fraction` < 1 prunes further, down to that share of
   * the limits (making room under block).
   */
  enforce(delta: Delta, fraction = 1): boolean {
    const counters = this.#conn.counters;
    let budget = MAINTAIN_MAX_ROWS;
    const overBy = () => {
      const events = counters.events + delta.events;
      const bytes = counters.bytes + delta.bytes;
      const byEvents = events - Math.floor(this.#limits.max_events * fraction);
      const avg = events > 0 ? bytes / events : 1;
      const byBytes = Math.ceil((bytes - Math.floor(this.#limits.max_bytes * fraction)) / Math.max(1, avg));
      return {
        n: Math.min(BATCH_ROWS, budget, Math.max(byEvents, byBytes, 0)),
        reason: byEvents >= byBytes ? "max_events" : "max_bytes",
      };
    };
    // 1. delivered rows, oldest first: already done, losing them costs only history.
    for (let o = overBy(); o.n > 0; o = overBy()) {
      const n = this.deleteSettled(DELIVERED, Number.MAX_SAFE_INTEGER, o.n, delta);
      budget -= n;
      if (n === 0) break;
    }
    // 2. dead rows, oldest first: they would only be sent again by an operator's replay.
    for (let o = overBy(); o.n > 0; o = overBy()) {
      const n = this.deleteSettled(DEAD, Number.MAX_SAFE_INTEGER, o.n, delta, "dead_pruned");
      budget -= n;
      if (n === 0) break;
    }
    // 3. pending rows: lowest priority first, oldest first within it.
    for (let o = overBy(); o.n > 0 && this.#limits.when_full !== "block"; o = overBy()) {
      const n = this.#dropPending(o.n, o.reason, delta);
      budget -= n;
      if (n === 0) break;
    }
    return this.overLimit(delta);
  }

  #dropPending(n: number, reason: string, delta: Delta): number {
    const s = this.#s;
    const lowest = s.priorityAbove.get(Number.MIN_SAFE_INTEGER) as number | undefined;
    if (lowest === undefined) return 0;
    type Row = RemovedRow & { series: string; is_head: number; created_at: number };
    const candidates: Row[] = [];
    const destinations = new Set<string>();
    for (const [d] of this.#conn.counters.entries()) destinations.add(d);
    for (const k of delta.counts.values()) destinations.add(k.destination);
    for (const d of destinations) candidates.push(...(s.oldestOfPriority.all(lowest, d, n) as Row[]));
    candidates.sort((a, b) => a.created_at - b.created_at || a.id - b.id);
    const victims = candidates.slice(0, n);
    const heads = new SeriesSet();
    for (const v of victims) {
      if (v.is_head === 1) heads.add(v.destination, v.series);
    }
    this.#remove(victims, PENDING, delta, reason);
    this.#heads.fixAll(heads);
    return victims.length;
  }

  /**
   * Inside a write: deletes up to `limit` rows of `state` settled before `cutoff`, oldest
   * first; counted as drops of `dropReason` when given.
   */
  deleteSettled(state: number, cutoff: number, limit: number, delta: Delta, dropReason?: string): number {
    const rows = this.#s.settledBefore.all(state, cutoff, limit) as RemovedRow[];
    this.#remove(rows, state, delta, dropReason);
    return rows.length;
  }

  /** Deletes the rows (all in `state`), counts them, then their events that have no delivery left. */
  #remove(rows: RemovedRow[], state: number, delta: Delta, dropReason: string | undefined): void {
    const s = this.#s;
    for (const r of rows) {
      s.deleteDelivery.run(r.id);
      delta.count(r.destination, state, -1);
      if (dropReason) delta.drop(dropReason, r.destination, 1);
    }
    for (const seq of new Set(rows.map((r) => r.event_seq))) {
      const size = s.deleteOrphanEvent.get(seq, seq) as number | undefined;
      if (size !== undefined) {
        delta.events--;
        delta.bytes -= size;
      }
    }
  }
}
