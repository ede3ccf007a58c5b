/**
 * The silence watch of one series of an `absent` rule (`absent_for`): seen → silent
 * (`sensor.silent`) → seen again (`sensor.returned`), and the row a restart needs.
 *
 * - absent_for runs on the agent's clock; sensor.silent carries the agent's time.
 * - It watches a whole sensor when `match.metric` is `*` (any metric keeps it alive;
 *   series metric "*"), otherwise each (sensor, metric). With literal names it watches
 *   from the start, so a sensor that never reports is reported too.
 * - Persistence: a row is written when a sensor is first seen and when it goes silent or
 *   returns, not per reading.
 * - Restart: the silence timer of a series seen before the restart starts again at
 *   restore time, so the agent's own downtime is not reported as sensor silence (and a
 *   restart after a long outage does not raise a storm of sensor.silent). A series that
 *   was silent stays silent (no second sensor.silent) and reports sensor.returned later.
 */
import type { CloseReason } from "../event-data.js";
import type { EventFields } from "../events.js";
import { seriesKey } from "../series-key.js";
import type { Reading, ReadingValue } from "../sources/reading.js";
import type { AbsentRule, CompiledRule } from "./compile.js";
import {
  EMPTY_LABELS,
  type EngineCore,
  isLabels,
  iso,
  labelsMatch,
  mergeLabels,
  num,
  type SeriesMachine,
} from "./core.js";
import { forgetFutureTs } from "./reading-time.js";

type SilentFields = EventFields<"sensor.silent">;

export class AbsentSeries implements SeriesMachine {
  readonly kind = "absent";
  rule: AbsentRule;
  readonly key: string;
  readonly sensor: string;
  readonly metric: string;
  persisted = false;
  dirty = false;
  activeAt: number;
  dueAt: number | undefined = undefined;
  dueToken = 0;
  gone = false;
  silent = false;
  /** The series has been seen (row written), as opposed to watched from a literal name. */
  seen = true;
  lastTs = Number.NEGATIVE_INFINITY;
  lastSeenAt: number;
  raw: ReadingValue | undefined = undefined;
  lastLabels: Readonly<Record<string, string>> = EMPTY_LABELS;
  /** Agent time the silence began (last reading, or restore/start time). */
  silenceFrom: number;
  /** The body's `since` of the silence: last reading time, or watch start. */
  sinceTs: number;

  constructor(rule: AbsentRule, key: string, sensor: string, metric: string, now: number) {
    this.rule = rule;
    this.key = key;
    this.sensor = sensor;
    this.metric = metric;
    this.activeAt = now;
    this.lastSeenAt = now;
    this.silenceFrom = now;
    this.sinceTs = now;
  }

  /** A series from its stored row; undefined when the row is not one of an absent rule. */
  static restore(
    core: EngineCore,
    rule: AbsentRule,
    key: string,
    sensor: string,
    metric: string,
    st: Record<string, unknown>,
    now: number,
  ): AbsentSeries | undefined {
    if (st.phase !== "seen" && st.phase !== "silent") return undefined;
    const s = new AbsentSeries(rule, key, sensor, metric, now);
    s.persisted = true;
    s.seen = true;
    s.lastTs = num(st.last_ts, Number.NEGATIVE_INFINITY);
    if (s.lastTs > now + core.maxFutureMs) {
      // Never let a time from the future outlive a restart: forget it, and rewrite the row.
      forgetFutureTs(core, s, now);
      core.mark(s);
    }
    if (isLabels(st.labels)) s.lastLabels = st.labels;
    if (st.phase === "silent") {
      s.silent = true;
      s.silenceFrom = num(st.silence_from, now);
      s.sinceTs = num(st.since, s.silenceFrom);
    }
    // lastSeenAt = now: the silence timer restarts at restore time (see the header).
    return s;
  }

  reading(core: EngineCore, r: Reading, now: number, restamped: boolean): void {
    if (this.silent) {
      // Built before the update, so last_seen is the reading before the silence.
      this.silent = false;
      core.mark(this);
      core.emit("sensor.returned", this.rule, this.key, r.ts, now, {
        ...this.#fields(),
        value: r.value,
        labels: mergeLabels(r.labels, this.rule.cfg.labels),
        duration_s: Math.max(0, Math.round((now - this.silenceFrom) / 1000)),
        reason: "reading received",
      });
    }
    if (!restamped) this.lastTs = r.ts;
    this.lastSeenAt = now;
    this.raw = r.value;
    this.lastLabels = r.labels;
    if (!this.seen) {
      this.seen = true;
      core.mark(this);
    }
    core.queue.schedule(this, now + this.rule.absentMs);
  }

  due(core: EngineCore, now: number): void {
    if (!this.silent && now >= this.lastSeenAt + this.rule.absentMs) {
      this.silent = true;
      this.silenceFrom = this.lastSeenAt;
      this.sinceTs = Number.isFinite(this.lastTs) ? this.lastTs : this.lastSeenAt;
      core.mark(this);
      core.emit("sensor.silent", this.rule, this.key, now, now, this.#fields());
    }
    this.schedule(core, now);
  }

  schedule(core: EngineCore, _now: number): void {
    if (!this.silent) core.queue.schedule(this, this.lastSeenAt + this.rule.absentMs);
  }

  state(): Record<string, unknown> | undefined {
    if (!this.seen && !this.silent) return undefined;
    const cfg = this.rule.cfg;
    if (!this.silent) {
      return {
        phase: "seen",
        last_ts: Number.isFinite(this.lastTs) ? this.lastTs : null,
        labels: this.lastLabels,
      };
    }
    return {
      phase: "silent",
      last_ts: Number.isFinite(this.lastTs) ? this.lastTs : null,
      since: this.sinceTs,
      silence_from: this.silenceFrom,
      value: this.raw ?? null,
      labels: mergeLabels(this.lastLabels, cfg.labels),
      severity: cfg.severity,
      priority: this.rule.priority,
      notify: cfg.notify,
    };
  }

  basis(): undefined {
    return undefined;
  }

  retarget(rule: CompiledRule): boolean {
    if (rule.kind !== "absent") return false;
    this.rule = rule;
    return true;
  }

  /** A silent series stays silent and a seen one keeps its last time, if it still matches. */
  adopt(core: EngineCore, nr: CompiledRule, _oldBasis: string | undefined): boolean {
    if (nr.kind !== "absent" || !nr.sensor(this.sensor)) return false;
    if (nr.labels !== undefined && !labelsMatch(nr.labels, this.lastLabels)) return false;
    // Whole-sensor series (metric "*") and per-metric series have different keys.
    if (nr.perSensor ? this.metric !== "*" : this.metric === "*" || !nr.metric(this.metric)) return false;
    this.rule = nr;
    if (this.persisted || this.seen || this.silent) core.mark(this);
    return true;
  }

  end(core: EngineCore, now: number, reason: CloseReason): void {
    if (!this.silent) return;
    core.emit("sensor.returned", this.rule, this.key, now, now, {
      ...this.#fields(),
      duration_s: Math.max(0, Math.round((now - this.silenceFrom) / 1000)),
      reason,
    });
  }

  atRest(): boolean {
    return false;
  }

  isOpen(): boolean {
    return this.silent;
  }

  isPending(): boolean {
    return false;
  }

  pinned(): boolean {
    return this.sensor === this.rule.knownSensor;
  }

  #fields(): SilentFields {
    const rule = this.rule;
    const cfg = rule.cfg;
    return {
      sensor: this.sensor,
      metric: this.metric,
      value: this.raw ?? null,
      threshold: rule.absentMs / 1000,
      condition: "absent_for",
      severity: cfg.severity,
      labels: mergeLabels(this.lastLabels, cfg.labels),
      since: iso(this.sinceTs),
      last_seen: Number.isFinite(this.lastTs) ? iso(this.lastTs) : null,
      absent_for_s: rule.absentMs / 1000,
    };
  }
}

/** Absent rules with literal names watch their series from the start, seen or not. */
export function watchKnownSensors(core: EngineCore, rules: readonly CompiledRule[], now: number): void {
  for (const rule of rules) {
    if (rule.kind !== "absent" || rule.knownSensor === undefined) continue;
    const metric = rule.perSensor ? "*" : rule.knownMetric;
    if (metric === undefined) continue;
    const key = seriesKey(rule.name, rule.knownSensor, metric);
    if (core.series.has(key)) continue;
    const s = new AbsentSeries(rule, key, rule.knownSensor, metric, now);
    s.seen = false;
    core.series.set(key, s);
    s.schedule(core, now);
  }
}
