/**
 * Writes committed batches: each event stored once with one delivery row per destination
 * (the first pending row of its series becomes the head, heads.ts), the batch's rule states
 * (rule-state.ts) and source message keys (message-keys.ts), all in the transaction of the
 * group (group-commit.ts). An event without destinations is not stored (nothing to
 * deliver); the rule states of its batch are. The limits are checked after every batch
 * against the counter mirror (limits.ts).
 */
import type { CommitBatch } from "../events.js";
import { bodyCrc } from "./body-check.js";
import type { OutboxConnection } from "./connection.js";
import type { Delta } from "./counters.js";
import { DELIVERY_OVERHEAD, EVENT_OVERHEAD, type Retention } from "./limits.js";
import { DUE_NOW, PENDING, seriesKey } from "./rows.js";
import type { RuleStates } from "./rule-state.js";
import type { CommitResult } from "./types.js";

export class Enqueue {
  readonly #conn: OutboxConnection;
  readonly #states: RuleStates;
  readonly #retention: Retention;
  readonly #s;

  constructor(conn: OutboxConnection, states: RuleStates, retention: Retention) {
    this.#conn = conn;
    this.#states = states;
    this.#retention = retention;
    const db = conn.db;
    this.#s = {
      insertEvent: db.prepare(
        `INSERT INTO events (id, type, rule, series, severity, priority, created_at, size, body, body_crc)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      insertDelivery: db.prepare(
        `INSERT INTO deliveries (event_seq, destination, series, priority, created_at, is_head, next_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      ),
      hasPending: db
        .prepare("SELECT 1 FROM deliveries WHERE destination = ? AND series = ? AND state = 0 LIMIT 1")
        .pluck(),
    };
  }

  /** Writes the batches in one transaction; throws (and stores nothing) if any fails. */
  write(batches: readonly CommitBatch[]): CommitResult[] {
    return this.#conn.write((delta) => {
      // Per transaction: does (destination, series) already have a pending row?
      const memo = new Map<string, boolean>();
      return batches.map((b) => this.#batch(b, delta, memo));
    });
  }

  #batch(b: CommitBatch, delta: Delta, memo: Map<string, boolean>): CommitResult {
    const s = this.#s;
    this.#states.write(b);
    if (b.messageKeys) this.#conn.messageKeys.insert(b.messageKeys);
    const dropped: Record<string, number> = {};
    for (const e of b.events) {
      const destinations = new Set(e.destinations);
      if (destinations.size === 0) continue;
      const body = Buffer.from(JSON.stringify(e.body));
      const size = body.length + EVENT_OVERHEAD + DELIVERY_OVERHEAD * destinations.size;
      const seq = s.insertEvent.run(
        e.id,
        e.type,
        e.rule,
        e.series,
        e.severity,
        e.priority,
        e.createdAt,
        size,
        body,
        bodyCrc(body),
      ).lastInsertRowid;
      for (const d of destinations) {
        const key = seriesKey(d, e.series);
        let hasPending = memo.get(key);
        if (hasPending === undefined) hasPending = s.hasPending.get(d, e.series) !== undefined;
        s.insertDelivery.run(seq, d, e.series, e.priority, e.createdAt, hasPending ? 0 : 1, DUE_NOW);
        memo.set(key, true);
        delta.count(d, PENDING, 1);
      }
      delta.events++;
      delta.bytes += size;
    }
    if (this.#retention.overLimit(delta)) {
      const before = { ...delta.drops };
      this.#retention.enforce(delta);
      for (const [reason, n] of Object.entries(delta.drops)) {
        const added = n - (before[reason] ?? 0);
        if (added > 0) dropped[reason] = added;
      }
      // Drops may have emptied a series: its next row must become head again.
      memo.clear();
    }
    return { accepted: b.events.length, dropped };
  }
}
