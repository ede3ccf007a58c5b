/**
 * Rule state per series (`series_state`), written in the transaction that stores the
 * events it produced (invariant 7: an event and the state behind it commit together or not
 * at all), and loaded when the rule engine starts or is rebuilt.
 */
import type { CommitBatch, SeriesStateRow } from "../events.js";
import type { Logger } from "../ops/logger.js";
import type { OutboxConnection } from "./connection.js";

interface StateRow {
  rule: string;
  series: string;
  version: string;
  state: string;
}

export class RuleStates {
  readonly #conn: OutboxConnection;
  readonly #log: Logger;
  readonly #s;

  constructor(conn: OutboxConnection, log: Logger) {
    this.#conn = conn;
    this.#log = log;
    const db = conn.db;
    this.#s = {
      upsertState: db.prepare(
        `INSERT INTO series_state (rule, series, version, state) VALUES (?, ?, ?, ?)
         ON CONFLICT (rule, series) DO UPDATE SET version = excluded.version, state = excluded.state`,
      ),
      deleteState: db.prepare("DELETE FROM series_state WHERE rule = ? AND series = ?"),
      loadStates: db.prepare("SELECT rule, series, version, state FROM series_state"),
    };
  }

  /** Inside a write: stores the batch's rule states and removes the ones it removed. */
  write(batch: Pick<CommitBatch, "states" | "removedStates">): void {
    const s = this.#s;
    for (const st of batch.states)
      s.upsertState.run(st.rule, st.series, st.version, JSON.stringify(st.state) ?? "null");
    for (const r of batch.removedStates) s.deleteState.run(r.rule, r.series);
  }

  load(): SeriesStateRow[] {
    const rows = this.#conn.guard(() => this.#s.loadStates.all() as StateRow[]);
    const out: SeriesStateRow[] = [];
    for (const r of rows) {
      try {
        out.push({ rule: r.rule, series: r.series, version: r.version, state: JSON.parse(r.state) });
      } catch (err) {
        // One unreadable row must not stop the agent from starting: that series starts fresh.
        this.#log.warn(
          { err, rule: r.rule, series: r.series },
          "unreadable rule state skipped; the series starts fresh",
        );
      }
    }
    return out;
  }
}
