/**
 * Persisted per-destination switches: a 410 Gone disables a destination (the dispatcher
 * sets it) until an operator re-enables it (`edgehook destination enable NAME`, possibly
 * from another process while the agent runs). They survive a restart.
 */
import type { Clock } from "../clock.js";
import type { OutboxConnection } from "./connection.js";
import { clip } from "./rows.js";
import type { DestinationFlag } from "./types.js";

interface FlagRow {
  name: string;
  disabled: number;
  reason: string | null;
  since: number | null;
}

export class DestinationFlags {
  readonly #clock: Clock;
  readonly #s;

  constructor(conn: OutboxConnection, clock: Clock) {
    this.#clock = clock;
    const db = conn.db;
    this.#s = {
      setFlag: db.prepare(
        `INSERT INTO destination_flags (name, disabled, reason, since) VALUES (?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET disabled = excluded.disabled, reason = excluded.reason, since = excluded.since`,
      ),
      flags: db.prepare("SELECT name, disabled, reason, since FROM destination_flags"),
    };
  }

  disable(name: string, reason: string): void {
    this.#s.setFlag.run(name, 1, clip(reason), this.#clock.now());
  }

  /** Re-enables a destination; false when it was not disabled. */
  enable(name: string): boolean {
    const flag = this.all()[name];
    if (!flag?.disabled) return false;
    this.#s.setFlag.run(name, 0, null, this.#clock.now());
    return true;
  }

  all(): Record<string, DestinationFlag> {
    const out: Record<string, DestinationFlag> = {};
    for (const r of this.#s.flags.all() as FlagRow[]) {
      const flag: DestinationFlag = { disabled: r.disabled === 1 };
      if (r.reason !== null) flag.reason = r.reason;
      if (r.since !== null) flag.since = r.since;
      out[r.name] = flag;
    }
    return out;
  }
}
