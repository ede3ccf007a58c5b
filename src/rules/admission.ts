/**
 * The series limit (`maxSeries`, agent.max_series; design invariant 6: sensor names come
 * from topics and lines, so their number is not ours to choose).
 *
 * At the limit a new series first gets room by eviction, in this order: series at rest
 * (ok, nothing stored, empty windows: nothing is lost); ok or seen series that keep
 * state (a cooldown, window samples, the silence watch of a sensor) and had no reading
 * for QUIET_IDLE_MS, least recently active first; then pending, firing, clearing and
 * silent series that had no reading for OPEN_IDLE_MS, least recently active first and
 * only as many as new series are waiting. An open one is closed for its receivers with
 * reason "series limit" (so no alert stays open forever for a series nobody tracks; a
 * later reading starts it afresh). Never evicted: a pending or open series that had a
 * reading in the last OPEN_IDLE_MS (a firing alert that is still reporting outranks a
 * newcomer), and the silence watch of a sensor an absent_for rule names literally.
 * Restored series count as active at restore. When nothing can go, the new series'
 * readings are skipped, counted in `stats.seriesLimit` and logged: the first time (with
 * the sensor turned away), then once a minute with counts while it lasts, and when there
 * is room again.
 */
import type { Reading } from "../sources/reading.js";
import type { CompiledRule } from "./compile.js";
import type { EngineCore, SeriesMachine } from "./core.js";

export const DEFAULT_MAX_SERIES = 100_000;
/** A series with state but nothing open must have had no reading this long to be evicted. */
export const QUIET_IDLE_MS = 60_000;
/** A pending, firing or silent series must have had no reading this long to be evicted. */
export const OPEN_IDLE_MS = 3_600_000;
/** One sweep makes room for this share of the limit (so sweeps stay rare under churn). */
const SWEEP_SHARE = 0.01;
/** Each change is logged at most this often, with the count in between. */
const LOG_INTERVAL_MS = 60_000;
/** At the limit, a sweep that found nothing to evict is not tried again for this long (it is O(series)). */
const SWEEP_INTERVAL_MS = 60_000;

export class SeriesLimit {
  #max: number;
  #lastSweep = Number.NEGATIVE_INFINITY;
  /** Readings of new series turned away since the last sweep: how many open series it may evict. */
  #demand = 0;
  /** New series are being turned away (for logging the change). */
  #refusing = false;
  /** Turned away since the last series-limit log line. */
  #turnedAway = 0;
  #fullLoggedAt = Number.NEGATIVE_INFINITY;
  #stillLoggedAt = Number.NEGATIVE_INFINITY;
  #roomLoggedAt = Number.NEGATIVE_INFINITY;

  constructor(max: number) {
    this.#max = max;
  }

  /** A new limit (reload); a sweep may help at once. */
  setMax(core: EngineCore, max: number): void {
    if (max === this.#max) return;
    this.#max = max;
    core.maySweep = true;
  }

  /** Room for the series of this reading? At the limit, sweeps; else turns it away. */
  admit(core: EngineCore, now: number, r: Reading, rule: CompiledRule): boolean {
    if (core.series.size >= this.#max && (core.maySweep || now - this.#lastSweep >= SWEEP_INTERVAL_MS)) {
      this.#sweep(core, now);
    }
    if (core.series.size < this.#max) {
      if (this.#refusing) this.#roomAgain(core, now);
      return true;
    }
    this.#refuse(core, now, r, rule);
    return false;
  }

  /**
   * Evicts, in the order of the header, until a share of the limit is free. Pending
   * before open among the open ones (nothing was sent for them). O(series), so not tried
   * again for a minute when it freed less than its share, unless a series went quiet
   * meanwhile.
   */
  #sweep(core: EngineCore, now: number): void {
    this.#lastSweep = now;
    const share = Math.max(1, Math.ceil(this.#max * SWEEP_SHARE));
    const want = core.series.size - this.#max + share;
    let freed = 0;
    const quiet: SeriesMachine[] = [];
    const open: SeriesMachine[] = [];
    for (const s of core.series.values()) {
      if (s.pinned()) continue;
      if (s.atRest(now)) {
        this.#evict(core, s, now);
        freed++;
      } else if (!s.isOpen()) {
        if (now - s.activeAt >= QUIET_IDLE_MS) quiet.push(s);
      } else if (now - s.activeAt >= OPEN_IDLE_MS) open.push(s);
    }
    const byAge = (a: SeriesMachine, b: SeriesMachine) => a.activeAt - b.activeAt;
    let idle = 0;
    if (freed < want && quiet.length > 0) {
      quiet.sort(byAge);
      for (const s of quiet) {
        if (freed >= want) break;
        this.#evict(core, s, now);
        freed++;
        idle++;
      }
    }
    let closed = 0;
    let oldest: SeriesMachine | undefined;
    if (freed < want && open.length > 0) {
      open.sort((a, b) => Number(b.isPending()) - Number(a.isPending()) || byAge(a, b));
      const limit = Math.min(want - freed, this.#demand + 1);
      oldest = open[0];
      for (const s of open) {
        if (closed >= limit) break;
        this.#evict(core, s, now);
        freed++;
        closed++;
      }
    }
    const stats = core.stats;
    stats.seriesEvictedIdle += idle;
    stats.seriesEvictedOpen += closed;
    core.maySweep = freed >= share;
    this.#demand = 0;
    if (idle + closed > 0) {
      const suppressed = core.quiet.shouldLog("evicted");
      if (suppressed !== undefined) {
        core.log.warn(
          {
            evicted_idle: idle,
            evicted_open: closed,
            ...(oldest
              ? {
                  oldest: { rule: oldest.rule.name, sensor: oldest.sensor, metric: oldest.metric },
                  idle_s: Math.round((now - oldest.activeAt) / 1000),
                }
              : {}),
            max_series: this.#max,
            evicted_total: stats.seriesEvicted,
            suppressed,
          },
          "series limit: evicted idle series to make room for new ones",
        );
      }
    }
  }

  #evict(core: EngineCore, s: SeriesMachine, now: number): void {
    s.end(core, now, "series limit");
    core.drop(s);
    core.stats.seriesEvicted++;
  }

  #refuse(core: EngineCore, now: number, r: Reading, rule: CompiledRule): void {
    core.stats.seriesLimit++;
    this.#turnedAway++;
    this.#demand++;
    const starting = !this.#refusing;
    this.#refusing = true;
    // The change is logged (at most once a minute); while it lasts, a line a minute with counts.
    if (starting ? now - this.#fullLoggedAt < LOG_INTERVAL_MS : now - this.#stillLoggedAt < LOG_INTERVAL_MS) return;
    if (starting) this.#fullLoggedAt = now;
    this.#stillLoggedAt = now;
    core.log.warn(
      {
        rule: rule.name,
        sensor: r.sensor,
        metric: r.metric,
        source: r.source,
        series: core.series.size,
        max_series: this.#max,
        turned_away: this.#turnedAway,
        series_limit_total: core.stats.seriesLimit,
      },
      starting
        ? "series limit reached: readings of new series are skipped (agent.max_series)"
        : "series limit: readings of new series are still skipped (agent.max_series)",
    );
    this.#turnedAway = 0;
  }

  #roomAgain(core: EngineCore, now: number): void {
    this.#refusing = false;
    if (now - this.#roomLoggedAt < LOG_INTERVAL_MS) return;
    this.#roomLoggedAt = now;
    core.log.info(
      {
        series: core.series.size,
        max_series: this.#max,
        turned_away: this.#turnedAway,
        series_limit_total: core.stats.seriesLimit,
        evicted_total: core.stats.seriesEvicted,
      },
      "series limit: room for new series again",
    );
    this.#turnedAway = 0;
  }
}
