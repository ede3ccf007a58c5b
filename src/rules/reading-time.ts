/**
 * Reading times the rules cannot take at face value. Counted in the engine's stats and
 * logged (rate-limited, with the sensor and how far off the time is).
 *
 * - Late readings: a reading older than the newest one already seen for its series
 *   (ts < last ts) is counted in `stats.late`, logged and ignored for that series: it
 *   changes no state, enters no window and does not end a silence. A delayed duplicate
 *   can therefore never resolve a firing alert or flap it. Equal timestamps are
 *   processed normally. Forwarding rules send late readings anyway (telemetry wants
 *   every point; the body carries its time).
 * - Readings from the future: a reading stamped more than `maxFutureMs` ahead of the
 *   agent's clock (a sensor clock in the year 2100, microseconds read as milliseconds, a
 *   zoneless time read in the wrong zone) is re-stamped with the agent's time, counted in
 *   `stats.future` and logged. Its value is real and judged like any other, so an alert
 *   still fires. Refusing it instead would turn a wrong sensor clock into lost alerts;
 *   keeping its time would make every later reading of the series "late". A re-stamped
 *   reading does not move its series' late guard (that compares the sensor's own times
 *   only), so the readings after it are judged normally. No time further ahead than the
 *   bound is ever kept: a series whose newest reading time is beyond it (the agent's
 *   clock was set back, or a row stored by an older version) forgets that time, on
 *   restore and when its next reading arrives.
 * - No usable time (NaN, before what a Date can hold): skipped, counted in `stats.badTime`.
 */
import type { Reading } from "../sources/reading.js";
import { type EngineCore, iso, type SeriesMachine, safeIso } from "./core.js";

/**
 * True (counted, logged) when the reading is older than the newest one of its series.
 * A newest time beyond the future bound is forgotten first: it can only come from a
 * clock that was set back since, and would make every reading late until it passes.
 */
export function isLate(core: EngineCore, s: SeriesMachine, r: Reading, now: number): boolean {
  if (s.lastTs > now + core.maxFutureMs) forgetFutureTs(core, s, now);
  if (!(r.ts < s.lastTs)) return false;
  core.stats.late++;
  const suppressed = core.quiet.shouldLog("late");
  if (suppressed !== undefined) {
    core.log.warn(
      {
        rule: s.rule.name,
        sensor: r.sensor,
        metric: r.metric,
        source: r.source,
        ts: iso(r.ts),
        newest_ts: iso(s.lastTs),
        behind_s: (s.lastTs - r.ts) / 1000,
        late_total: core.stats.late,
        suppressed,
      },
      "late reading ignored by the rule: older than the newest reading of its series",
    );
  }
  return true;
}

export function forgetFutureTs(core: EngineCore, s: SeriesMachine, now: number): void {
  core.stats.futureState++;
  const suppressed = core.quiet.shouldLog("future_state");
  if (suppressed !== undefined) {
    core.log.warn(
      {
        rule: s.rule.name,
        sensor: s.sensor,
        metric: s.metric,
        newest_ts: safeIso(s.lastTs),
        ahead_s: Math.round((s.lastTs - now) / 1000),
        max_future_skew_s: core.maxFutureMs / 1000,
        suppressed,
      },
      "newest reading time of a series is ahead of the agent's clock (was the clock set back?): forgotten",
    );
  }
  s.lastTs = Number.NEGATIVE_INFINITY;
}

/** The reading as judged: stamped with the agent's time. */
export function restamp(core: EngineCore, r: Reading, now: number): Reading {
  core.stats.future++;
  const suppressed = core.quiet.shouldLog("future");
  if (suppressed !== undefined) {
    core.log.warn(
      {
        sensor: r.sensor,
        metric: r.metric,
        source: r.source,
        ts: safeIso(r.ts),
        ahead_s: Number.isFinite(r.ts) ? Math.round((r.ts - now) / 1000) : null,
        max_future_skew_s: core.maxFutureMs / 1000,
        future_total: core.stats.future,
        suppressed,
      },
      "reading stamped ahead of the agent's clock: judged with its arrival time instead",
    );
  }
  return { ...r, ts: now };
}

export function badTime(core: EngineCore, r: Reading): void {
  core.stats.badTime++;
  const suppressed = core.quiet.shouldLog("bad_time");
  if (suppressed !== undefined) {
    core.log.warn(
      {
        sensor: r.sensor,
        metric: r.metric,
        source: r.source,
        ts: String(r.ts),
        bad_time_total: core.stats.badTime,
        suppressed,
      },
      "reading without a usable time skipped",
    );
  }
}
