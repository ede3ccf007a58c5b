/**
 * Refusal (backpressure): when the outbox stores nothing new, and why. A refused group is
 * refused whole (group-commit.ts): neither its events nor the rule states and message keys
 * that came with them are stored, so an alert is never half done, and sources keep their
 * readings unacknowledged and offer them again; nothing is dropped (invariant 7).
 *
 * - min_free_disk: while free space on the data directory's filesystem is under it, new
 *   groups are refused (EDGEHOOK_DISK_FLOOR).
 * - when_full: block: once max_events or max_bytes is reached (after delivered and dead
 *   rows made what room they could, limits.ts), new groups are refused
 *   (EDGEHOOK_OUTBOX_FULL) until deliveries settle and make room. A group admitted just
 *   under the limit is stored whole, so the limit can be passed by one group.
 * - damage met while running (damage.ts): refused until the agent restarts and salvages
 *   the file (EDGEHOOK_DB_CORRUPT).
 *
 * refusal() says so before any work is done; it is logged when it starts and ends, and
 * shown by edgehook_outbox_refusing.
 */
import { statfsSync } from "node:fs";
import { dirname } from "node:path";
import type { Clock } from "../clock.js";
import { EdgehookError } from "../errors.js";
import type { Logger } from "../ops/logger.js";
import type { Metrics } from "../ops/metrics.js";
import type { OutboxConnection } from "./connection.js";
import type { DamageWatch } from "./damage.js";
import type { OutboxLimits, Retention } from "./limits.js";
import { mib } from "./rows.js";

/** How long a free-disk reading is trusted. */
const DISK_CHECK_MS = 1000;
/** when_full: block: once full, new events are taken again below this share of both limits. */
const FULL_RESUME = 0.9;

/** Why the outbox stores nothing new right now (see Outbox.refusal). */
export interface Refusal {
  /**
   * `disk_floor`: free disk under min_free_disk; `full`: max_events/max_bytes reached with
   * when_full: block; `damaged`: the database failed while running (see Outbox.damage).
   */
  reason: "disk_floor" | "full" | "damaged";
  /** Epoch ms since when it refuses. */
  since: number;
  /** For the operator: what is short and what to do. */
  detail: string;
}

/**
 * A commit the outbox refused as a whole (nothing of it stored): the disk floor, or a full
 * outbox under `when_full: block`. Sources keep the readings unacknowledged and offer
 * them again; nothing is dropped.
 */
export class OutboxRefusedError extends EdgehookError {
  readonly refusal: Refusal;
  constructor(refusal: Refusal) {
    super(refusalCode(refusal.reason), `outbox refuses new events (${refusal.reason}): ${refusal.detail}`);
    this.refusal = refusal;
  }
}

function refusalCode(
  reason: Refusal["reason"],
): "EDGEHOOK_DISK_FLOOR" | "EDGEHOOK_OUTBOX_FULL" | "EDGEHOOK_DB_CORRUPT" {
  return reason === "disk_floor"
    ? "EDGEHOOK_DISK_FLOOR"
    : reason === "full"
      ? "EDGEHOOK_OUTBOX_FULL"
      : "EDGEHOOK_DB_CORRUPT";
}

/** The refusal state of one Outbox; it outlives a close and reopen, like the gauge it drives. */
export class Admission {
  readonly #file: string;
  readonly #limits: OutboxLimits;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #damage: DamageWatch;
  #diskCheckedAt = Number.NEGATIVE_INFINITY;
  #diskFree: number | undefined;
  #roomCheckedAt = Number.NEGATIVE_INFINITY;
  #refusing: Refusal | undefined;

  constructor(options: {
    file: string;
    limits: OutboxLimits;
    clock: Clock;
    logger: Logger;
    metrics: Metrics;
    damage: DamageWatch;
  }) {
    this.#file = options.file;
    this.#limits = options.limits;
    this.#clock = options.clock;
    this.#log = options.logger;
    this.#metrics = options.metrics;
    this.#damage = options.damage;
  }

  /**
   * Whether the open outbox refuses new events now, and why. Cheap: free space is read at
   * most once a second, the limits are in-memory counters. Callers ask first so that work
   * they cannot store is not started (and is offered again). Logs when it starts and stops
   * refusing.
   */
  refusal(conn: OutboxConnection, retention: Retention): Refusal | undefined {
    let reason: Refusal["reason"] | undefined;
    let detail = "";
    const free = this.#freeDisk();
    const damage = this.#damage.current;
    const counters = conn.counters;
    if (damage) {
      reason = "damaged";
      detail = `${damage.sqliteCode} since ${new Date(damage.since).toISOString()}; restart edgehook to salvage the database`;
    } else if (free !== undefined && free < this.#limits.min_free_disk) {
      reason = "disk_floor";
      detail = `${mib(free)} free on ${dirname(this.#file)}, outbox.min_free_disk is ${mib(this.#limits.min_free_disk)}; free up space there or lower outbox.min_free_disk`;
    } else if (this.#full(conn, retention)) {
      reason = "full";
      detail = `${counters.events} events and ${mib(counters.bytes)} stored, outbox.max_events is ${this.#limits.max_events} and outbox.max_bytes ${mib(this.#limits.max_bytes)} (when_full: block); events are stored again as destinations accept them`;
    }
    const was = this.#refusing;
    if (reason === undefined) {
      if (was) {
        this.#refusing = undefined;
        this.#metrics.outboxRefusing.set({ reason: was.reason }, 0);
        this.#log.info(
          { reason: was.reason, refusedMs: this.#clock.now() - was.since },
          `outbox accepts new events again (${was.reason} is over after ${Math.round((this.#clock.now() - was.since) / 1000)} s); held readings are being committed`,
        );
      }
      return undefined;
    }
    if (was?.reason === reason) {
      was.detail = detail;
      return was;
    }
    if (was) this.#metrics.outboxRefusing.set({ reason: was.reason }, 0);
    const refusal: Refusal = { reason, since: this.#clock.now(), detail };
    this.#refusing = refusal;
    this.#metrics.outboxRefusing.set({ reason }, 1);
    this.#log.warn(
      { reason, code: refusalCode(reason) },
      `outbox refuses new events (${reason}): ${detail}. Nothing is dropped meanwhile: MQTT messages stay unacknowledged at the broker, serial readings are held (up to a bound, then dropped and counted), and rule state is not advanced; all of it is committed once there is room`,
    );
    return refusal;
  }

  /** Free bytes on the data directory's filesystem, read at most once a second. */
  #freeDisk(): number | undefined {
    const mono = this.#clock.monotonic();
    if (mono - this.#diskCheckedAt < DISK_CHECK_MS) return this.#diskFree;
    this.#diskCheckedAt = mono;
    try {
      const st = statfsSync(dirname(this.#file));
      this.#diskFree = Number(st.bavail) * Number(st.bsize);
    } catch {
      // Cannot tell: keep the last answer.
    }
    return this.#diskFree;
  }

  /**
   * when_full: block and full, even after pruning delivered and dead rows. Full starts
   * at a limit and ends only below FULL_RESUME of both (hysteresis), so a steady overload
   * alternates in long stretches instead of refusing and accepting every other commit.
   */
  #full(conn: OutboxConnection, retention: Retention): boolean {
    if (this.#limits.when_full !== "block") return false;
    const counters = conn.counters;
    counters.sync();
    const wasFull = this.#refusing?.reason === "full";
    const fraction = wasFull ? FULL_RESUME : 1;
    const full = () =>
      wasFull
        ? counters.events > this.#limits.max_events * fraction || counters.bytes > this.#limits.max_bytes * fraction
        : counters.events >= this.#limits.max_events || counters.bytes >= this.#limits.max_bytes;
    if (!full()) return false;
    const mono = this.#clock.monotonic();
    if (counters.totalSettled() > 0 && mono - this.#roomCheckedAt >= DISK_CHECK_MS) {
      this.#roomCheckedAt = mono;
      conn.write((delta) => retention.enforce(delta, FULL_RESUME));
    }
    return full();
  }
}
