/**
 * What the operator changes: `edgehook queue replay` puts settled deliveries back in their
 * place in their series (heads.ts), `edgehook queue purge` deletes old settled rows (the
 * same deletion as pruning, limits.ts). Both run from another process while the agent
 * runs; the agent's counter mirror notices (counters.ts). Large requests go in
 * transactions of BATCH_ROWS rows, so the agent's writes interleave.
 */
import type { Clock } from "../clock.js";
import type { OutboxConnection } from "./connection.js";
import type { Delta } from "./counters.js";
import type { SeriesHeads } from "./heads.js";
import type { Retention } from "./limits.js";
import { BATCH_ROWS, DUE_NOW, PENDING, SeriesSet, STATE_CODES } from "./rows.js";
import type { PurgeRequest, ReplayTarget } from "./types.js";

interface SettledRow {
  id: number;
  destination: string;
  series: string;
  state: number;
}

export class OperatorWrites {
  readonly #conn: OutboxConnection;
  readonly #heads: SeriesHeads;
  readonly #retention: Retention;
  readonly #clock: Clock;
  readonly #s;

  constructor(options: { conn: OutboxConnection; heads: SeriesHeads; retention: Retention; clock: Clock }) {
    this.#conn = options.conn;
    this.#heads = options.heads;
    this.#retention = options.retention;
    this.#clock = options.clock;
    const db = options.conn.db;
    this.#s = {
      seqOf: db.prepare("SELECT seq FROM events WHERE id = ?").pluck(),
      settledOfEvent: db.prepare(
        "SELECT id, destination, series, state FROM deliveries WHERE event_seq = ? AND state <> 0",
      ),
      deadOf: db.prepare(
        `SELECT id, destination, series, state FROM deliveries
         WHERE state <> 0 AND state = 2 AND destination = ? LIMIT ?`,
      ),
      markReplayed: db.prepare(
        `UPDATE deliveries SET state = 0, is_head = 0, attempts = 0, next_at = ?, settled_at = NULL, reason = NULL
         WHERE id = ?`,
      ),
    };
  }

  /**
   * Puts settled deliveries back to pending with their attempts reset. They keep their
   * place in their series: a replayed row older than the current head becomes the head.
   * Returns how many rows went back to pending.
   */
  replay(target: ReplayTarget): number {
    const s = this.#s;
    if ("eventId" in target) {
      const seq = s.seqOf.get(target.eventId) as number | undefined;
      if (seq === undefined) return 0;
      return this.#conn.write((delta) => this.#requeue(s.settledOfEvent.all(seq) as SettledRow[], delta));
    }
    return inBatches(() =>
      this.#conn.write((delta) => this.#requeue(s.deadOf.all(target.destination, BATCH_ROWS) as SettledRow[], delta)),
    );
  }

  /** Deletes settled rows older than the given age; returns how many deliveries went. */
  purge(request: PurgeRequest): number {
    const cutoff = this.#clock.now() - request.olderThanMs;
    let total = 0;
    for (const state of new Set(request.states)) {
      total += inBatches(() =>
        this.#conn.write((delta) => this.#retention.deleteSettled(STATE_CODES[state], cutoff, BATCH_ROWS, delta)),
      );
    }
    return total;
  }

  #requeue(rows: SettledRow[], delta: Delta): number {
    const series = new SeriesSet();
    for (const r of rows) {
      this.#s.markReplayed.run(DUE_NOW, r.id);
      delta.move(r.destination, r.state, PENDING, 1);
      series.add(r.destination, r.series);
    }
    this.#heads.fixAll(series);
    return rows.length;
  }
}

/** Runs `step` (one transaction of at most BATCH_ROWS rows) until a step does less; returns the sum. */
function inBatches(step: () => number): number {
  let total = 0;
  for (;;) {
    const n = step();
    total += n;
    if (n < BATCH_ROWS) return total;
  }
}
