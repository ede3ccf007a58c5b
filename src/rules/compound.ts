/**
 * `when` rules: an alert whose condition is a CEL expression over the latest values of
 * several metrics (expression.ts), judged by the alert state machine of alert.ts. The
 * expression's outcome is handed to that machine as one of four verdicts, so `for`,
 * `clear_for`, `repeat_every`, `cooldown`, persistence and restart behave exactly as for
 * a threshold rule:
 *
 * - HOLDS (`when` is true): active; pending, then firing.
 * - CLEARS (`when` is false, and `clear_when` is true if given): a firing alert clears.
 * - NEITHER (`when` false but `clear_when` not yet true): hysteresis; a firing alert stays
 *   firing, a pending one goes back to ok.
 * - UNKNOWN (an input missing or older than `stale_after`, or an evaluation error):
 *   neither fires nor resolves. A pending alert goes back to ok (the condition was not
 *   seen to hold for all of `for`), a clearing one back to firing; a firing one stays.
 *
 * One series per (rule, sensor); its metric is the list of the sensor's own metrics the
 * expression reads ("temperature,door_open"). LatestValues keeps the newest value of each
 * metric some expression reads, per sensor, with the agent time it arrived; a value is
 * stale when it arrived more than `stale_after` ago (agent clock, like `for`).
 *
 * Cost: an expression is evaluated only when one of its inputs changes value, when its
 * last outcome was unknown, or when an input may have gone stale since; a reading that
 * repeats a value evaluates nothing.
 */
import type { RuleConfig } from "../config/schema.js";
import { seriesKey } from "../series-key.js";
import type { Reading, ReadingValue } from "../sources/reading.js";
import type { Condition } from "./conditions.js";
import { type CompiledExpression, compileExpression, type ExpressionInput } from "./expression.js";

/**
 * `stale_after` when a rule or derive entry does not set it: 10 minutes, longer than the
 * usual `for` and the report interval of most sensors. Inputs that report only on change
 * (a door contact) need a longer one.
 */
export const DEFAULT_STALE_AFTER_MS = 10 * 60_000;

export const HOLDS = "holds";
export const CLEARS = "clears";
export const NEITHER = "neither";
export const UNKNOWN = "unknown";
export type Verdict = typeof HOLDS | typeof CLEARS | typeof NEITHER | typeof UNKNOWN;

export interface Compound {
  readonly when: CompiledExpression;
  readonly clearWhen: CompiledExpression | undefined;
  readonly staleMs: number;
  /** Metrics of the judged sensor itself that the expressions read. */
  readonly own: ReadonlySet<string>;
  /** Metrics of other, named sensors that the expressions read. */
  readonly others: readonly ExpressionInput[];
  /** The series' metric name. */
  readonly seriesMetric: string;
}

/** The compound part of a rule with `when`; undefined for other rules. */
export function compileCompound(r: RuleConfig): Compound | undefined {
  if (r.when === undefined) return undefined;
  const when = compileExpression(r.when, "bool");
  const clearWhen = r.clear_when === undefined ? undefined : compileExpression(r.clear_when, "bool");
  const inputs = [...when.inputs, ...(clearWhen?.inputs ?? [])];
  const own = new Set<string>();
  const others: ExpressionInput[] = [];
  for (const i of inputs) {
    if (i.sensor === undefined) own.add(i.metric);
    else if (!others.some((o) => o.sensor === i.sensor && o.metric === i.metric)) others.push(i);
  }
  return {
    when,
    clearWhen,
    staleMs: r.stale_after ?? DEFAULT_STALE_AFTER_MS,
    own,
    others,
    seriesMetric: own.size > 0 ? [...own].join(",") : "*",
  };
}

/** The condition the alert machine runs for a `when` rule: it reads verdicts. */
export function whenCondition(when: string): Condition {
  return {
    name: "when",
    threshold: when,
    numeric: false,
    active: (v) => v === HOLDS,
    clear: (v) => v === CLEARS,
  };
}

interface Latest {
  value: ReadingValue;
  ts: number;
  /** Agent time it arrived. */
  at: number;
}

/** The table of newest values is swept once it holds more sensors than this. */
const SWEEP_FLOOR = 1024;

/**
 * Keeps a table of newest values per sensor bounded (design invariant: bounded memory).
 * A value older than the longest `stale_after` can no longer be read by any expression, so
 * it is dropped, and a sensor left with none goes too. The sweep runs when the table has
 * doubled since the last one (amortised O(1) per new sensor), so the table holds at most
 * about twice the sensors heard from within the longest `stale_after`, plus SWEEP_FLOOR.
 */
export class StaleSweep {
  #at = SWEEP_FLOOR;

  /** Call before a new sensor is added to `values`; returns the sensors dropped. */
  beforeAdd(values: Map<string, Map<string, { at: number }>>, now: number, staleMs: number): string[] {
    if (values.size <= this.#at) return NONE_DROPPED;
    const dropped: string[] = [];
    for (const [sensor, byMetric] of values) {
      for (const [metric, v] of byMetric) if (now - v.at > staleMs) byMetric.delete(metric);
      if (byMetric.size === 0) {
        values.delete(sensor);
        dropped.push(sensor);
      }
    }
    this.#at = Math.max(SWEEP_FLOOR, 2 * values.size);
    return dropped;
  }
}
const NONE_DROPPED: string[] = [];

/** What one evaluation saw. */
export interface Judgement {
  verdict: Verdict;
  /** The `when` result, when known. */
  value: boolean | undefined;
  /** Every input value read, by how the expression names it. */
  values: Record<string, ReadingValue>;
  /** Why the verdict is UNKNOWN. */
  reason: string | undefined;
  /** Agent time from which an input it read is stale: judge again before trusting it later. */
  freshUntil: number;
}

/** A compound rule as the store needs it. */
export interface CompoundRuleRef {
  readonly name: string;
  readonly compound: Compound;
}

/**
 * The newest value of every metric some `when` rule reads, per sensor, and which series
 * to judge again when another sensor's metric changes.
 */
export class LatestValues {
  #values = new Map<string, Map<string, Latest>>();
  /** Own metrics of any compound rule (for any sensor). */
  #own = new Set<string>();
  /** "sensor\u001fmetric" of another sensor → the rules that read it. */
  #followers = new Map<string, CompoundRuleRef[]>();
  /** Rule name → sensors it has a series for (judged again when a followed input changes). */
  #sensors = new Map<string, Set<string>>();
  /** Rules that read metrics of the judged sensor itself. */
  #ownInputs = new Set<string>();
  /** Whether the last recorded reading changed its metric's value. */
  changed = false;
  /** The longest `stale_after` of the rules: older values are never read. */
  #staleMs = DEFAULT_STALE_AFTER_MS;
  readonly #sweep = new StaleSweep();

  /** Sensors with a value kept (bounded by the sweep). */
  get sensors(): number {
    return this.#values.size;
  }

  setRules(rules: readonly CompoundRuleRef[]): void {
    this.#staleMs = rules.reduce((m, r) => Math.max(m, r.compound.staleMs), 0);
    this.#own = new Set();
    this.#followers = new Map();
    const names = new Set<string>();
    this.#ownInputs = new Set();
    for (const r of rules) {
      names.add(r.name);
      if (r.compound.own.size > 0) this.#ownInputs.add(r.name);
      for (const m of r.compound.own) this.#own.add(m);
      for (const o of r.compound.others) {
        const k = `${o.sensor}\u001f${o.metric}`;
        const list = this.#followers.get(k);
        if (list) list.push(r);
        else this.#followers.set(k, [r]);
      }
    }
    for (const n of this.#sensors.keys()) if (!names.has(n)) this.#sensors.delete(n);
  }

  /**
   * Whether any expression reads this metric of this sensor. Called for every reading: the
   * key of another sensor's metric is built only when some expression reads one.
   */
  watches(sensor: string, metric: string): boolean {
    if (this.#own.has(metric)) return true;
    return this.#followers.size > 0 && this.#followers.has(`${sensor}\u001f${metric}`);
  }

  /**
   * Records a reading of a watched metric (sets `changed`). A reading older than the one
   * kept (a late one) is not recorded.
   */
  record(r: Reading, ts: number, now: number): void {
    let bySensor = this.#values.get(r.sensor);
    if (bySensor === undefined) {
      this.#forget(this.#sweep.beforeAdd(this.#values, now, this.#staleMs));
      bySensor = new Map();
      this.#values.set(r.sensor, bySensor);
    }
    const prev = bySensor.get(r.metric);
    if (prev === undefined) {
      bySensor.set(r.metric, { value: r.value, ts, at: now });
      this.changed = true;
      return;
    }
    if (ts < prev.ts) {
      this.changed = false;
      return;
    }
    this.changed = prev.value !== r.value;
    prev.value = r.value;
    prev.ts = ts;
    prev.at = now;
  }

  /**
   * Sensors whose values all went stale are no longer judged again when another sensor's
   * metric changes (their own inputs are missing, so the verdict could only be unknown);
   * their next reading notes them again. Rules that read only other sensors keep theirs.
   */
  #forget(sensors: readonly string[]): void {
    if (sensors.length === 0) return;
    for (const [rule, set] of this.#sensors) {
      if (!this.#ownInputs.has(rule)) continue;
      for (const s of sensors) set.delete(s);
    }
  }

  /** Rules reading this metric of this sensor as another sensor's. */
  followers(sensor: string, metric: string): readonly CompoundRuleRef[] | undefined {
    return this.#followers.get(`${sensor}\u001f${metric}`);
  }

  /** The series keys of a rule, for judging them again. */
  *seriesOf(rule: CompoundRuleRef): Iterable<string> {
    const set = this.#sensors.get(rule.name);
    if (set === undefined) return;
    for (const s of set) yield seriesKey(rule.name, s, rule.compound.seriesMetric);
  }

  noteSeries(rule: string, sensor: string): void {
    let set = this.#sensors.get(rule);
    if (set === undefined) {
      set = new Set();
      this.#sensors.set(rule, set);
    }
    set.add(sensor);
  }

  /** Evaluates a rule's expressions for one sensor at agent time `now`. */
  judge(c: Compound, sensor: string, now: number): Judgement {
    let freshUntil = Number.POSITIVE_INFINITY;
    const lookup = (i: ExpressionInput): ReadingValue | undefined => {
      const e = this.#values.get(i.sensor ?? sensor)?.get(i.metric);
      if (e === undefined || now - e.at > c.staleMs) return undefined;
      const until = e.at + c.staleMs;
      if (until < freshUntil) freshUntil = until;
      return e.value;
    };
    const values: Record<string, ReadingValue> = {};
    const w = c.when.evaluate(lookup, values);
    if (!w.known) return { verdict: UNKNOWN, value: undefined, values, reason: w.reason, freshUntil };
    const value = w.value === true;
    if (value) return { verdict: HOLDS, value, values, reason: undefined, freshUntil };
    if (c.clearWhen === undefined) return { verdict: CLEARS, value, values, reason: undefined, freshUntil };
    const cw = c.clearWhen.evaluate(lookup, values);
    if (!cw.known) return { verdict: NEITHER, value, values, reason: `clear_when: ${cw.reason}`, freshUntil };
    return { verdict: cw.value === true ? CLEARS : NEITHER, value, values, reason: undefined, freshUntil };
  }
}
