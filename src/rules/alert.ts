/**
 * The alert state machine of one series of an `alert` rule (a threshold or rate
 * condition): ok → pending → firing → clearing → ok, with `for`, `clear_for`,
 * `repeat_every`, `cooldown` and hysteresis, and the row a restart needs.
 *
 * - Time. `for`, `clear_for`, `cooldown`, `repeat_every` and windows run on the agent's
 *   clock, so a sensor with a wrong clock cannot stall or rush them. Bodies carry the
 *   time of the reading that caused the event; events caused by time alone (a `for`
 *   completing on tick, repeats) carry the agent's time. `rate_*` divides by the
 *   readings' own time difference (see windows.ts).
 * - Boundaries: strictly above / strictly below (conditions.ts).
 * - Values: numeric conditions read numbers, booleans as 1/0 and numeric text; other
 *   values are counted in `stats.nonNumeric` and skipped. `equals` compares as text.
 * - Cooldown: after a resolve, a condition that comes back waits (pending) until the
 *   cooldown is over, then fires if it still holds. Nothing is lost, it is only delayed.
 * - Aggregates are evaluated at each reading, and while an alert is pending or firing
 *   also when a sample leaves the window, so a `count` alert clears when the readings
 *   stop. An emptied avg/min/max window is "no data", not a value: the state is kept.
 * - Persistence: a row is written when pending (with the pending-since time), firing,
 *   clearing, or resolved with a cooldown; a reading that changes nothing writes
 *   nothing. Windows are not persisted; after a restart they refill from new readings
 *   (a rate needs two samples again).
 * - Restart: a firing series stays firing (no second firing) and resolves normally. A
 *   pending or clearing series continues from where it was: its timer keeps its start,
 *   and it completes on time with or without a new reading. Repeats and cooldowns
 *   continue their schedule. The latest value is not written per reading, so an event
 *   caused by time alone after a restart, before the series' next reading, carries the
 *   value stored at its last state change.
 */
import type { CloseReason, DataValue } from "../event-data.js";
import type { EventFields } from "../events.js";
import type { Reading, ReadingValue } from "../sources/reading.js";
import type { AlertRule, CompiledRule } from "./compile.js";
import { UNKNOWN } from "./compound.js";
import { toNumber } from "./conditions.js";
import {
  dataValue,
  EMPTY_LABELS,
  type EngineCore,
  isLabels,
  iso,
  isReadingValue,
  labelsMatch,
  mergeLabels,
  num,
  round6,
  type SeriesMachine,
} from "./core.js";
import { AggregateWindow, RateWindow } from "./windows.js";

const OK = 0;
const PENDING = 1;
const FIRING = 2;
const CLEARING = 3;
type Phase = typeof OK | typeof PENDING | typeof FIRING | typeof CLEARING;
const PHASE_NAMES = ["ok", "pending", "firing", "clearing"] as const;

function phaseOf(name: unknown): Phase | undefined {
  switch (name) {
    case "ok":
      return OK;
    case "pending":
      return PENDING;
    case "firing":
      return FIRING;
    case "clearing":
      return CLEARING;
    default:
      return undefined;
  }
}

type AlertFields = EventFields<"alert.firing">;

/** What an alert series' value is computed from: `raw`, `avg:300000`, `rate:60000:60`. */
function valueBasis(rule: AlertRule): string {
  if (rule.aggregate !== undefined) return `${rule.aggregate.fn}:${rule.aggregate.overMs}`;
  if (rule.rate !== undefined) return `rate:${rule.rate.windowMs}:${rule.rate.factor}`;
  return "raw";
}

export class AlertSeries implements SeriesMachine {
  readonly kind = "alert";
  rule: AlertRule;
  readonly key: string;
  readonly sensor: string;
  readonly metric: string;
  persisted = false;
  dirty = false;
  activeAt: number;
  dueAt: number | undefined = undefined;
  dueToken = 0;
  gone = false;
  phase: Phase = OK;
  lastTs = Number.NEGATIVE_INFINITY;
  lastLabels: Readonly<Record<string, string>> = EMPTY_LABELS;
  raw: ReadingValue | undefined = undefined;
  /** Last compared value: the reading, its aggregate or its rate. */
  value: ReadingValue | undefined = undefined;
  /** Agent time the condition started (pending since). */
  pendingAt = 0;
  /** Reading time the condition started: the body's `since`. */
  sinceTs = 0;
  firedAt = 0;
  clearingAt = 0;
  notifiedAt = 0;
  repeats = 0;
  cooldownUntil = 0;
  agg: AggregateWindow | undefined = undefined;
  rate: RateWindow | undefined = undefined;
  /** `when` rules: the input values of the last evaluation, by how the expression names them. */
  values: Record<string, ReadingValue> = {};
  /** `when` rules: why the last evaluation was unknown (undefined when it was known). */
  unknown: string | undefined = "not evaluated yet";
  /** `when` rules: agent time from which an input of the last evaluation is stale. */
  freshUntil = Number.NEGATIVE_INFINITY;

  constructor(rule: AlertRule, key: string, sensor: string, metric: string, now: number) {
    this.rule = rule;
    this.key = key;
    this.sensor = sensor;
    this.metric = metric;
    this.activeAt = now;
  }

  /** A series from its stored row; undefined when the row holds nothing to keep. */
  static restore(
    core: EngineCore,
    rule: AlertRule,
    key: string,
    sensor: string,
    metric: string,
    st: Record<string, unknown>,
    now: number,
  ): AlertSeries | undefined {
    const phase = phaseOf(st.phase);
    if (phase === undefined) return undefined;
    const s = new AlertSeries(rule, key, sensor, metric, now);
    s.persisted = true;
    s.phase = phase;
    s.pendingAt = num(st.pending_at, now);
    s.sinceTs = num(st.since, now);
    s.firedAt = num(st.fired_at, now);
    s.clearingAt = num(st.clearing_at, now);
    s.notifiedAt = num(st.notified_at, s.firedAt);
    s.repeats = num(st.repeats, 0);
    s.cooldownUntil = num(st.cooldown_until, 0);
    // Stored as null when there was none.
    s.value = isReadingValue(st.value) ? st.value : undefined;
    if (isLabels(st.labels)) s.lastLabels = st.labels;
    if (phase === OK && s.cooldownUntil <= now) {
      // Only an expired cooldown was left: nothing to keep.
      core.carry.removedStates.push({ rule: rule.name, series: key });
      return undefined;
    }
    return s;
  }

  reading(core: EngineCore, r: Reading, now: number, restamped: boolean): void {
    const rule = this.rule;
    if (rule.compound !== undefined) {
      // The store of latest values took the reading (engine.ts); lastTs stays unset, as
      // readings of different metrics are not late against each other (the store keeps
      // the newest per metric).
      this.lastLabels = r.labels;
      core.latest.noteSeries(rule.name, this.sensor);
      if (!core.latest.changed && this.unknown === undefined && now < this.freshUntil) return;
      this.#judge(core, r.ts, now);
      return;
    }
    const cond = rule.condition;
    let v: number | string;
    let x = 0;
    if (cond.numeric) {
      x = toNumber(r.value);
      if (!Number.isFinite(x)) {
        core.stats.nonNumeric++;
        return;
      }
      v = x;
    } else {
      v = typeof r.value === "string" ? r.value : String(r.value);
    }
    if (!restamped) this.lastTs = r.ts;
    this.lastLabels = r.labels;
    this.raw = r.value;
    if (rule.aggregate !== undefined) {
      if (this.agg === undefined) this.agg = new AggregateWindow(rule.aggregate.fn, rule.aggregate.overMs);
      this.agg.evict(now);
      this.agg.add(now, x);
      // Never undefined: the window holds the sample just added.
      const a = this.agg.value();
      if (a === undefined) return;
      v = a;
    } else if (rule.rate !== undefined) {
      if (this.rate === undefined) this.rate = new RateWindow(rule.rate.windowMs);
      this.rate.evict(now);
      this.rate.add(now, r.ts, x);
      const perSecond = this.rate.perSecond();
      if (perSecond === undefined) return;
      v = perSecond * rule.rate.factor;
    }
    this.value = cond.numeric ? v : r.value;
    this.#step(core, v, r.ts, now);
    if (this.agg !== undefined && this.phase !== OK) {
      const expiry = this.agg.nextExpiry();
      if (expiry !== undefined) core.queue.schedule(this, expiry);
    }
  }

  /** `when` rules: an input of another sensor changed. */
  recheck(core: EngineCore, ts: number, now: number): void {
    this.#judge(core, ts, now);
  }

  /** `when` rules: evaluates the expressions and hands the verdict to the state machine. */
  #judge(core: EngineCore, ts: number, now: number): void {
    const c = this.rule.compound;
    if (c === undefined) return;
    const j = core.latest.judge(c, this.sensor, now);
    this.values = j.values;
    this.unknown = j.verdict === UNKNOWN ? j.reason : undefined;
    this.freshUntil = j.freshUntil;
    if (j.value !== undefined) this.value = j.value;
    this.#step(core, j.verdict, ts, now);
  }

  due(core: EngineCore, now: number): void {
    // A `when` rule is judged again before its `for` completes: an input may have gone
    // stale meanwhile, and unknown must not fire.
    if (this.rule.compound !== undefined && this.phase === PENDING && now >= this.#pendingDue()) {
      this.#judge(core, now, now);
    }
    // A window that loses samples changes its aggregate without any reading: an open
    // alert (count of door openings, say) must be able to clear when the readings stop.
    if (this.agg !== undefined && this.phase !== OK) {
      this.agg.evict(now);
      const v = this.agg.value();
      if (v !== undefined) {
        this.value = v;
        this.#step(core, v, now, now);
      }
    }
    if (this.phase === PENDING && now >= this.#pendingDue()) {
      this.#fire(core, now, now);
    } else if (this.phase === CLEARING && now >= this.clearingAt + this.rule.clearForMs) {
      this.#resolve(core, now, now, "cleared");
    } else {
      const every = this.rule.repeatMs;
      if ((this.phase === FIRING || this.phase === CLEARING) && every !== undefined && now >= this.notifiedAt + every) {
        this.notifiedAt = now;
        this.repeats++;
        core.emit("alert.repeat", this.rule, this.key, now, now, {
          ...this.#fields(),
          repeat: this.repeats,
          firing_for_s: Math.round((now - this.firedAt) / 1000),
        });
        core.mark(this);
      }
    }
    this.schedule(core, now);
  }

  schedule(core: EngineCore, now: number): void {
    let due = Number.POSITIVE_INFINITY;
    if (this.phase === PENDING) due = this.#pendingDue();
    else if (this.phase === CLEARING) due = this.clearingAt + this.rule.clearForMs;
    if ((this.phase === FIRING || this.phase === CLEARING) && this.rule.repeatMs !== undefined) {
      const r = this.notifiedAt + this.rule.repeatMs;
      if (r < due) due = r;
    }
    if (this.agg !== undefined && this.phase !== OK) {
      const expiry = this.agg.nextExpiry();
      if (expiry !== undefined && expiry < due) due = expiry;
    }
    if (due !== Number.POSITIVE_INFINITY) core.queue.schedule(this, Math.max(due, now));
  }

  state(): Record<string, unknown> | undefined {
    const cfg = this.rule.cfg;
    switch (this.phase) {
      case OK:
        return this.cooldownUntil > 0 ? { phase: "ok", cooldown_until: this.cooldownUntil } : undefined;
      case PENDING:
        return {
          phase: "pending",
          pending_at: this.pendingAt,
          since: this.sinceTs,
          value: this.value ?? null,
          basis: valueBasis(this.rule),
          ...(this.cooldownUntil > 0 ? { cooldown_until: this.cooldownUntil } : {}),
        };
      default:
        return {
          phase: PHASE_NAMES[this.phase],
          since: this.sinceTs,
          fired_at: this.firedAt,
          ...(this.phase === CLEARING ? { clearing_at: this.clearingAt } : {}),
          notified_at: this.notifiedAt,
          repeats: this.repeats,
          value: this.value ?? null,
          // What the value is, so a rule changed while the agent is down can judge it again.
          basis: valueBasis(this.rule),
          // Enough to send alert.resolved if the rule is removed while the agent is down.
          severity: cfg.severity,
          priority: this.rule.priority,
          notify: cfg.notify,
          labels: mergeLabels(this.lastLabels, cfg.labels),
        };
    }
  }

  basis(): string {
    return valueBasis(this.rule);
  }

  retarget(rule: CompiledRule): boolean {
    if (rule.kind !== "alert") return false;
    this.rule = rule;
    return true;
  }

  /**
   * A firing (or clearing) series stays firing when its last value is not clear under
   * the new condition; a pending one stays pending when the value still meets it; an
   * ok one stays ok. Only when the series still matches and its value means the same.
   */
  adopt(core: EngineCore, nr: CompiledRule, oldBasis: string | undefined): boolean {
    if (nr.kind !== "alert" || !nr.sensor(this.sensor)) return false;
    if (nr.labels !== undefined && !labelsMatch(nr.labels, this.lastLabels)) return false;
    if (!nr.metric(this.metric) || valueBasis(nr) !== oldBasis) return false;
    const cond = nr.condition;
    // Raw values are judged again as the new condition reads them (number or text).
    const src = nr.aggregate === undefined && nr.rate === undefined ? (this.raw ?? this.value) : this.value;
    let v: number | string | undefined;
    if (src !== undefined) {
      if (!cond.numeric) v = String(src);
      else {
        const x = toNumber(src);
        if (Number.isFinite(x)) v = x;
      }
    }
    if (this.phase === FIRING || this.phase === CLEARING) {
      if (v === undefined || cond.clear(v)) return false;
      this.phase = FIRING;
      this.value = cond.numeric ? v : src;
    } else if (this.phase === PENDING && (v === undefined || !cond.active(v))) {
      this.phase = OK;
    }
    this.rule = nr;
    if (this.persisted || this.phase !== OK) core.mark(this);
    return true;
  }

  end(core: EngineCore, now: number, reason: CloseReason): void {
    if (this.phase !== FIRING && this.phase !== CLEARING) return;
    core.emit("alert.resolved", this.rule, this.key, now, now, {
      ...this.#fields(),
      duration_s: Math.max(0, Math.round((now - this.firedAt) / 1000)),
      reason,
    });
  }

  /**
   * Ok, no stored row, no cooldown and no samples in its window. (Only its late-reading
   * guard goes, which a reading older than a forgotten one cannot turn into a flap: it
   * starts from ok.)
   */
  atRest(now: number): boolean {
    if (this.phase !== OK || this.persisted || this.dirty || this.cooldownUntil > now) return false;
    if (this.agg !== undefined) {
      this.agg.evict(now);
      if (this.agg.count > 0) return false;
    }
    if (this.rate !== undefined) {
      this.rate.evict(now);
      if (this.rate.count > 0) return false;
    }
    return true;
  }

  isOpen(): boolean {
    return this.phase !== OK;
  }

  isPending(): boolean {
    return this.phase === PENDING;
  }

  pinned(): boolean {
    return false;
  }

  #pendingDue(): number {
    return Math.max(this.cooldownUntil, this.pendingAt + this.rule.forMs);
  }

  #step(core: EngineCore, v: number | string, ts: number, now: number): void {
    const cond = this.rule.condition;
    switch (this.phase) {
      case OK: {
        if (!cond.active(v)) return;
        this.pendingAt = now;
        this.sinceTs = ts;
        const due = this.#pendingDue();
        if (now >= due) this.#fire(core, ts, now);
        else {
          this.phase = PENDING;
          core.mark(this);
          core.queue.schedule(this, due);
        }
        return;
      }
      case PENDING: {
        if (!cond.active(v)) {
          this.phase = OK;
          core.mark(this);
          core.maySweep = true;
          return;
        }
        const due = this.#pendingDue();
        if (now >= due) this.#fire(core, ts, now);
        else core.queue.schedule(this, due);
        return;
      }
      case FIRING: {
        if (!cond.clear(v)) return;
        if (this.rule.clearForMs === 0) this.#resolve(core, ts, now, "cleared");
        else {
          this.phase = CLEARING;
          this.clearingAt = now;
          core.mark(this);
          core.queue.schedule(this, now + this.rule.clearForMs);
        }
        return;
      }
      default: {
        if (!cond.clear(v)) {
          this.phase = FIRING;
          core.mark(this);
          return;
        }
        const due = this.clearingAt + this.rule.clearForMs;
        if (now >= due) this.#resolve(core, ts, now, "cleared");
        else core.queue.schedule(this, due);
      }
    }
  }

  #fire(core: EngineCore, ts: number, now: number): void {
    this.phase = FIRING;
    this.firedAt = now;
    this.notifiedAt = now;
    this.repeats = 0;
    core.mark(this);
    core.emit("alert.firing", this.rule, this.key, ts, now, this.#fields());
    if (this.rule.repeatMs !== undefined) core.queue.schedule(this, now + this.rule.repeatMs);
  }

  #resolve(core: EngineCore, ts: number, now: number, reason: CloseReason): void {
    core.emit("alert.resolved", this.rule, this.key, ts, now, {
      ...this.#fields(),
      duration_s: Math.max(0, Math.round((ts - this.sinceTs) / 1000)),
      reason,
    });
    this.phase = OK;
    this.cooldownUntil = this.rule.cooldownMs !== undefined ? now + this.rule.cooldownMs : 0;
    core.mark(this);
    core.maySweep = true;
  }

  /** The body fields of an alert event about this series, from its last value. */
  #fields(): AlertFields {
    const rule = this.rule;
    const cfg = rule.cfg;
    const cond = rule.condition;
    const value = this.value;
    const base = {
      sensor: this.sensor,
      metric: this.metric,
      // Aggregates and rates are computed: 6 decimals are plenty and read better than 2.666666666666667.
      value:
        value === undefined ? null : typeof value === "number" && (rule.aggregate || rule.rate) ? round6(value) : value,
      threshold: cond.threshold,
      condition: cond.name,
      severity: cfg.severity,
      labels: mergeLabels(this.lastLabels, cfg.labels),
      since: iso(this.sinceTs),
    };
    if (rule.aggregate !== undefined) {
      return {
        ...base,
        aggregate: { fn: rule.aggregate.fn, over_s: rule.aggregate.overMs / 1000 },
        reading_value: dataValue(this.raw),
      };
    }
    if (rule.compound !== undefined) {
      const values: Record<string, DataValue> = {};
      for (const [k, v] of Object.entries(this.values)) values[k] = v;
      return { ...base, expression: cfg.when ?? "", clear_when: cfg.clear_when ?? null, values };
    }
    if (rule.rate !== undefined) {
      return {
        ...base,
        rate_per: cfg.rate_per,
        rate_window_s: rule.rate.windowMs / 1000,
        reading_value: dataValue(this.raw),
      };
    }
    return base;
  }
}
