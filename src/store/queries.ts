/**
 * The read-only side the operator sees: `edgehook queue stats|list|show`, `edgehook status`,
 * /status and the outbox gauges of /metrics. Counts come from the counter mirror
 * (counters.ts), never from COUNT(*); listings are bounded by their limit.
 */
import { statSync } from "node:fs";
import type { Clock } from "../clock.js";
import type { Metrics } from "../ops/metrics.js";
import { checkBody } from "./body-check.js";
import type { OutboxConnection } from "./connection.js";
import { PENDING, parseHistory, STATE_CODES, STATE_NAMES } from "./rows.js";
import type { DeliveryListing, DeliveryState, DestinationStats, EventDetail } from "./types.js";

interface DeliveryRow {
  id: number;
  event_id: string;
  destination: string;
  series: string;
  type: string;
  priority: number;
  state: number;
  attempts: number;
  created_at: number;
  next_at: number;
  settled_at: number | null;
  last_status: number | null;
  last_error: string | null;
  reason: string | null;
}

interface EventRow {
  seq: number;
  id: string;
  type: string;
  rule: string;
  series: string;
  severity: string;
  priority: number;
  created_at: number;
  body: Buffer;
  body_crc: number | null;
}

const LISTING_COLUMNS = `d.id, e.id AS event_id, d.destination, d.series, e.type, d.priority, d.state, d.attempts,
  d.created_at, d.next_at, d.settled_at, d.last_status, d.last_error, d.reason`;

export class Queries {
  readonly #conn: OutboxConnection;
  readonly #clock: Clock;
  readonly #metrics: Metrics;
  readonly #file: string;
  readonly #s;

  constructor(options: { conn: OutboxConnection; clock: Clock; metrics: Metrics; file: string }) {
    this.#conn = options.conn;
    this.#clock = options.clock;
    this.#metrics = options.metrics;
    this.#file = options.file;
    const db = options.conn.db;
    this.#s = {
      oldestPending: db.prepare("SELECT MIN(created_at) FROM deliveries WHERE destination = ? AND is_head = 1").pluck(),
      list: db.prepare(
        `SELECT ${LISTING_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq
         WHERE (@state IS NULL OR d.state = @state) AND (@destination IS NULL OR d.destination = @destination)
         ORDER BY d.id DESC LIMIT @limit`,
      ),
      // Delivered or dead rows, most recently settled first, through the prune index (a
      // few dead rows among a million delivered ones are found without a scan).
      listSettled: db.prepare(
        `SELECT ${LISTING_COLUMNS} FROM deliveries d INDEXED BY deliveries_prune_settled
         JOIN events e ON e.seq = d.event_seq
         WHERE d.state <> 0 AND d.state = @state AND (@destination IS NULL OR d.destination = @destination)
         ORDER BY d.state DESC, d.settled_at DESC LIMIT @limit`,
      ),
      eventById: db.prepare(
        "SELECT seq, id, type, rule, series, severity, priority, created_at, body, body_crc FROM events WHERE id = ?",
      ),
      deliveriesOfEvent: db.prepare(
        `SELECT ${LISTING_COLUMNS}, d.history FROM deliveries d JOIN events e ON e.seq = d.event_seq
         WHERE d.event_seq = ? ORDER BY d.id`,
      ),
    };
  }

  stats(): DestinationStats[] {
    const counters = this.#conn.counters;
    counters.sync();
    const now = this.#clock.now();
    const out: DestinationStats[] = [];
    for (const [destination, [pending, delivered, dead]] of [...counters.entries()].sort(([a], [b]) =>
      a.localeCompare(b),
    )) {
      if (pending === 0 && delivered === 0 && dead === 0) continue;
      out.push({
        destination,
        pending,
        delivered,
        dead,
        oldestPendingAgeMs: this.#oldestPendingAge(destination, pending, now),
      });
    }
    return out;
  }

  /** Totals the limits are checked against. */
  totals(): { events: number; bytes: number; pending: number } {
    const counters = this.#conn.counters;
    counters.sync();
    return { events: counters.events, bytes: counters.bytes, pending: counters.totalPending() };
  }

  list(query: { state?: DeliveryState; destination?: string; limit?: number } = {}): DeliveryListing[] {
    const state = query.state === undefined ? null : STATE_CODES[query.state];
    const stmt = state === null || state === PENDING ? this.#s.list : this.#s.listSettled;
    const rows = stmt.all({
      state,
      destination: query.destination ?? null,
      limit: query.limit ?? 50,
    }) as DeliveryRow[];
    return rows.map(toListing);
  }

  /** Throws DamagedBodyError for a body that fails its checksum (and so `queue replay ID` refuses it too). */
  show(eventId: string): EventDetail | undefined {
    const e = this.#s.eventById.get(eventId) as EventRow | undefined;
    if (!e) return undefined;
    checkBody(e.id, e.body, e.body_crc);
    const deliveries = (this.#s.deliveriesOfEvent.all(e.seq) as (DeliveryRow & { history: string | null })[]).map(
      (r) => ({ ...toListing(r), history: parseHistory(r.history) }),
    );
    return {
      id: e.id,
      type: e.type,
      rule: e.rule,
      series: e.series,
      severity: e.severity,
      priority: e.priority,
      createdAt: e.created_at,
      body: e.body.toString("utf8"),
      deliveries,
    };
  }

  /** Brings the outbox gauges up to date (before each /metrics scrape, after maintenance). */
  updateMetrics(): void {
    this.#conn.guard(() => {
      const now = this.#clock.now();
      for (const [destination, c] of this.#conn.counters.entries()) {
        c.forEach((n, state) => {
          this.#metrics.outboxDepth.set({ destination, state: STATE_NAMES[state] as string }, n);
        });
        const age = this.#oldestPendingAge(destination, c[PENDING], now);
        this.#metrics.oldestPendingSeconds.set({ destination }, age === null ? 0 : age / 1000);
      }
      let bytes = 0;
      for (const f of [this.#file, `${this.#file}-wal`]) {
        try {
          bytes += statSync(f).size;
        } catch {
          // no WAL file right now
        }
      }
      this.#metrics.outboxBytes.set(bytes);
    });
  }

  /** Age of the oldest pending delivery of `destination`, or null when none is pending. */
  #oldestPendingAge(destination: string, pending: number, now: number): number | null {
    const oldest = pending > 0 ? (this.#s.oldestPending.get(destination) as number | null) : null;
    return oldest === null ? null : Math.max(0, now - oldest);
  }
}

function toListing(r: DeliveryRow): DeliveryListing {
  return {
    id: r.id,
    eventId: r.event_id,
    destination: r.destination,
    series: r.series,
    type: r.type,
    priority: r.priority,
    state: STATE_NAMES[r.state] ?? "pending",
    attempts: r.attempts,
    createdAt: r.created_at,
    nextAt: r.state === PENDING ? r.next_at : null,
    settledAt: r.settled_at,
    lastStatus: r.last_status,
    lastError: r.last_error,
    reason: r.reason,
  };
}
