/**
 * Turns a validated RuleConfig into what the engine runs: matchers, one condition
 * with `active`/`clear` tests, timings in ms, and a version hash of the parts that
 * define the series state machine.
 *
 * Boundaries follow the Prometheus / Home Assistant convention: `above: 30` is active
 * for values strictly greater than 30 (30 itself is not), `below: 10` strictly less.
 * `between: [lo, hi]` is inclusive, `outside: [lo, hi]` is strictly outside.
 * Hysteresis: with `clear_below: 25` a firing `above` alert clears only when the value
 * is strictly below 25; without it, as soon as the value is no longer above (≤ 30).
 */
import { createHash } from "node:crypto";
import type { RuleConfig } from "../config/schema.js";
import { SEVERITY_PRIORITY } from "../events.js";
import type { ReadingValue } from "../sources/reading.js";
import { compileGlob, hasWildcard, type Matcher } from "./glob.js";
import type { AggregateFn } from "./windows.js";

export type ConditionName = "above" | "below" | "between" | "outside" | "equals" | "rate_above" | "rate_below";

export interface Condition {
  name: ConditionName;
  /** What the body reports as `threshold`. */
  threshold: number | string | boolean | readonly [number, number];
  /** False for `equals`, which compares text states. */
  numeric: boolean;
  /** The alert condition holds (pending/firing). */
  active: (v: number | string) => boolean;
  /** A firing alert may clear (hysteresis); by default `!active`. */
  clear: (v: number | string) => boolean;
}

export type RuleKind = "alert" | "absent" | "forward";

export interface CompiledRule {
  readonly cfg: RuleConfig;
  readonly name: string;
  /** Hash of the state-defining part of the rule; stored with each series state. */
  readonly version: string;
  readonly kind: RuleKind;
  readonly sensor: Matcher;
  readonly metric: Matcher;
  readonly labels: readonly (readonly [string, string])[] | undefined;
  readonly priority: number;
  readonly condition: Condition | undefined;
  readonly aggregate: { fn: AggregateFn; overMs: number } | undefined;
  /** Rate window and the factor from per-second to the rule's `rate_per`. */
  readonly rate: { windowMs: number; factor: number } | undefined;
  readonly forMs: number;
  readonly clearForMs: number;
  readonly repeatMs: number | undefined;
  readonly cooldownMs: number | undefined;
  readonly absentMs: number | undefined;
  /** absent_for with `match.metric: "*"` watches whole sensors (any metric keeps it alive). */
  readonly perSensor: boolean;
  /** Literal sensor (and metric) names an absent rule can watch before the first reading. */
  readonly knownSensor: string | undefined;
  readonly knownMetric: string | undefined;
  readonly batchMs: number | undefined;
}

const RATE_FACTOR = { s: 1, m: 60, h: 3600 } as const;

/** Numeric view of a reading value: booleans are 1/0, numeric text is parsed; NaN otherwise. */
export function toNumber(v: ReadingValue): number {
  if (typeof v === "number") return v;
  if (typeof v === "boolean") return v ? 1 : 0;
  const t = v.trim();
  return t === "" ? Number.NaN : Number(t);
}

/**
 * The fields that shape a series' state machine. Presentation (severity, priority,
 * labels, extra, notify) and the repeat/cooldown cadence are applied live on reload
 * without restarting firing alerts; changing anything here starts the rule's series fresh.
 */
export function ruleVersion(r: RuleConfig): string {
  const core = {
    match: { sensor: r.match.sensor, metric: r.match.metric, labels: sortKeys(r.match.labels ?? {}) },
    above: r.above,
    below: r.below,
    between: r.between,
    outside: r.outside,
    equals: r.equals,
    clear_below: r.clear_below,
    clear_above: r.clear_above,
    for: r.for,
    clear_for: r.clear_for,
    rate_above: r.rate_above,
    rate_below: r.rate_below,
    rate_per: r.rate_above !== undefined || r.rate_below !== undefined ? r.rate_per : undefined,
    rate_window: r.rate_above !== undefined || r.rate_below !== undefined ? r.rate_window : undefined,
    aggregate: r.aggregate,
    absent_for: r.absent_for,
    forward: r.forward,
  };
  return createHash("sha256").update(JSON.stringify(core)).digest("hex").slice(0, 16);
}

function sortKeys(o: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of Object.keys(o).sort()) out[k] = o[k] as string;
  return out;
}

function condition(r: RuleConfig): Condition | undefined {
  if (r.above !== undefined) {
    const t = r.above;
    const c = r.clear_below;
    return {
      name: "above",
      threshold: t,
      numeric: true,
      active: (v) => (v as number) > t,
      clear: c === undefined ? (v) => !((v as number) > t) : (v) => (v as number) < c,
    };
  }
  if (r.below !== undefined) {
    const t = r.below;
    const c = r.clear_above;
    return {
      name: "below",
      threshold: t,
      numeric: true,
      active: (v) => (v as number) < t,
      clear: c === undefined ? (v) => !((v as number) < t) : (v) => (v as number) > c,
    };
  }
  if (r.between !== undefined) {
    const [lo, hi] = r.between;
    const active = (v: number | string) => (v as number) >= lo && (v as number) <= hi;
    return { name: "between", threshold: r.between, numeric: true, active, clear: (v) => !active(v) };
  }
  if (r.outside !== undefined) {
    const [lo, hi] = r.outside;
    // Hysteresis on both sides: back above clear_above and back below clear_below.
    const cLo = r.clear_above;
    const cHi = r.clear_below;
    return {
      name: "outside",
      threshold: r.outside,
      numeric: true,
      active: (v) => (v as number) < lo || (v as number) > hi,
      clear: (v) =>
        (cLo === undefined ? (v as number) >= lo : (v as number) > cLo) &&
        (cHi === undefined ? (v as number) <= hi : (v as number) < cHi),
    };
  }
  if (r.equals !== undefined) {
    // Text states compare as text, so `equals: OPEN`, `equals: 1` and `equals: true`
    // match the decoded values "OPEN", 1 and true alike.
    const want = String(r.equals);
    return {
      name: "equals",
      threshold: r.equals,
      numeric: false,
      active: (v) => String(v) === want,
      clear: (v) => String(v) !== want,
    };
  }
  if (r.rate_above !== undefined) {
    const t = r.rate_above;
    return {
      name: "rate_above",
      threshold: t,
      numeric: true,
      active: (v) => (v as number) > t,
      clear: (v) => !((v as number) > t),
    };
  }
  if (r.rate_below !== undefined) {
    const t = r.rate_below;
    return {
      name: "rate_below",
      threshold: t,
      numeric: true,
      active: (v) => (v as number) < t,
      clear: (v) => !((v as number) < t),
    };
  }
  return undefined;
}

export function compileRule(r: RuleConfig): CompiledRule {
  const cond = condition(r);
  const isRate = r.rate_above !== undefined || r.rate_below !== undefined;
  const kind: RuleKind = cond ? "alert" : r.absent_for !== undefined ? "absent" : "forward";
  const labelPairs = r.match.labels ? Object.entries(r.match.labels) : [];
  const perSensor = kind === "absent" && /^\*+$/.test(r.match.metric);
  return {
    cfg: r,
    name: r.name,
    version: ruleVersion(r),
    kind,
    sensor: compileGlob(r.match.sensor),
    metric: compileGlob(r.match.metric),
    labels: labelPairs.length > 0 ? labelPairs : undefined,
    priority: r.priority ?? SEVERITY_PRIORITY[r.severity],
    condition: cond,
    aggregate: r.aggregate && cond && !isRate ? { fn: r.aggregate.fn, overMs: r.aggregate.over } : undefined,
    rate: isRate ? { windowMs: r.rate_window, factor: RATE_FACTOR[r.rate_per] } : undefined,
    forMs: r.for ?? 0,
    clearForMs: r.clear_for ?? 0,
    repeatMs: r.repeat_every || undefined,
    cooldownMs: r.cooldown || undefined,
    absentMs: kind === "absent" ? r.absent_for : undefined,
    perSensor,
    knownSensor: kind === "absent" && !hasWildcard(r.match.sensor) ? r.match.sensor : undefined,
    knownMetric: kind === "absent" && !perSensor && !hasWildcard(r.match.metric) ? r.match.metric : undefined,
    batchMs: typeof r.forward === "object" ? r.forward.batch_every : undefined,
  };
}
