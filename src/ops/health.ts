/**
 * What GET /healthz reports. The agent assembles a HealthReport from its parts with
 * evaluateHealth(); the HTTP server only serialises it.
 *
 * Status: `failing` (HTTP 503) when the agent cannot do its job — the outbox database
 * is not open, failed while running (SQLITE_CORRUPT/SQLITE_IOERR: a restart salvages it),
 * or the processing loop stopped beating. `degraded` (HTTP 200) when a
 * source or destination is down, or the outbox refuses new events (disk floor, full
 * under `when_full: block`) so sources hold their readings: being offline is normal for
 * a store-and-forward agent (design invariant 4), and a restart would not fix it. `ok`
 * otherwise.
 */
import type { Clock } from "../clock.js";
import type { SourceState } from "../sources/reading.js";

export type HealthStatus = "ok" | "degraded" | "failing";
/** `corrupt`/`io_error`: the outbox file failed while running (SQLITE_CORRUPT, SQLITE_IOERR); a restart salvages it. */
export type DatabaseState = "open" | "closed" | "corrupt" | "io_error";

export interface DestinationHealth {
  state: "up" | "down" | "disabled";
  pending: number;
  dead: number;
  /** Age of the oldest pending delivery in seconds, or null when none is pending. */
  oldest_pending_s: number | null;
}

export interface OutboxHealth {
  pending: number;
  dead: number;
  /** Database files on disk, bytes. */
  bytes: number;
  /** Age of the oldest pending delivery in seconds, or null when none is pending. */
  oldest_pending_s: number | null;
  /**
   * Why the outbox stores nothing new right now (`disk_floor`, `full`), or null. Sources
   * hold their readings meanwhile (MQTT messages stay unacknowledged at the broker).
   */
  refusing?: "disk_floor" | "full" | "damaged" | null;
}

export interface HealthReport {
  status: HealthStatus;
  /** agent.id from the configuration. */
  agent: string;
  uptime_s: number;
  database: DatabaseState;
  /** Seconds since the processing loop last beat (see Heartbeat). */
  loop_idle_s: number;
  sources: SourceState[];
  destinations: Record<string, DestinationHealth>;
  outbox: OutboxHealth;
  /** Human-readable reasons for a status other than ok. */
  problems: string[];
}

export interface HealthInput {
  agent: string;
  /** Milliseconds since the agent started. */
  uptimeMs: number;
  database: DatabaseState;
  loop: { alive: boolean; idleMs: number };
  sources: SourceState[];
  destinations: Record<string, DestinationHealth>;
  outbox: OutboxHealth;
  /** What the outbox refusal is about, for `problems` (with outbox.refusing). */
  refusalDetail?: string;
  /** The SQLite error behind a `corrupt`/`io_error` database, for `problems`. */
  databaseDetail?: string;
}

/** Derives the status and the problem list from the parts' states. */
export function evaluateHealth(input: HealthInput): HealthReport {
  const failing: string[] = [];
  const degraded: string[] = [];
  if (input.database !== "open") {
    failing.push(`database is ${input.database}${input.databaseDetail ? `: ${input.databaseDetail}` : ""}`);
  }
  if (!input.loop.alive) failing.push(`processing loop silent for ${Math.round(input.loop.idleMs / 1000)} s`);
  for (const s of input.sources) {
    if (s.status === "down") degraded.push(`source ${s.name} is down${s.detail ? `: ${s.detail}` : ""}`);
    // A dead unit on a Modbus bus that otherwise works, a 1-Wire probe that stopped reading.
    else if (s.status === "up") {
      for (const d of s.devices ?? []) {
        if (d.status === "down")
          degraded.push(`device ${d.id} (${d.sensor}) of ${s.name} is down${d.detail ? `: ${d.detail}` : ""}`);
      }
    }
  }
  for (const [name, d] of Object.entries(input.destinations)) {
    if (d.state !== "up") degraded.push(`destination ${name} is ${d.state}`);
  }
  if (input.outbox.refusing && input.outbox.refusing !== "damaged") {
    degraded.push(
      `outbox refuses new events (${input.outbox.refusing}), sources hold their readings${input.refusalDetail ? `: ${input.refusalDetail}` : ""}`,
    );
  }
  const status: HealthStatus = failing.length > 0 ? "failing" : degraded.length > 0 ? "degraded" : "ok";
  return {
    status,
    agent: input.agent,
    uptime_s: Math.floor(input.uptimeMs / 1000),
    database: input.database,
    loop_idle_s: Math.floor(input.loop.idleMs / 1000),
    sources: input.sources,
    destinations: input.destinations,
    outbox: input.outbox,
    problems: [...failing, ...degraded],
  };
}

/** HTTP status for a report: 503 only when failing. */
export function httpStatusOf(report: HealthReport): 200 | 503 {
  return report.status === "failing" ? 503 : 200;
}

/**
 * Proof of life of a loop that should run regularly (the dispatcher's timer, the
 * housekeeping tick): the loop calls beat(); alive() is false once no beat came for
 * maxSilenceMs. Used by /healthz and to withhold the systemd watchdog ping.
 */
export class Heartbeat {
  readonly #clock: Clock;
  readonly #maxSilenceMs: number;
  #last: number;

  /** Counts from construction, so a loop that never starts is reported too. */
  constructor(clock: Clock, maxSilenceMs: number) {
    this.#clock = clock;
    this.#maxSilenceMs = maxSilenceMs;
    this.#last = clock.monotonic();
  }

  beat(): void {
    this.#last = this.#clock.monotonic();
  }

  /** Milliseconds since the last beat (or since construction). */
  idleMs(): number {
    return Math.max(0, this.#clock.monotonic() - this.#last);
  }

  alive(): boolean {
    return this.idleMs() <= this.#maxSilenceMs;
  }
}
