/**
 * The condition of an alert rule (`active`/`clear` tests, compiled from the rule's
 * threshold keys), the numeric view of a reading value, and the version hash of the
 * parts of a rule that define its series state machine. compile.ts puts them together.
 *
 * Boundaries follow the Prometheus / Home Assistant convention: `above: 30` is active
 * for values strictly greater than 30 (30 itself is not), `below: 10` strictly less.
 * `between: [lo, hi]` is inclusive, `outside: [lo, hi]` is strictly outside.
 * Hysteresis: with `clear_below: 25` a firing `above` alert clears only when the value
 * is strictly below 25; without it, as soon as the value is no longer above (≤ 30).
 */
import { createHash } from "node:crypto";
import type { RuleConfig } from "../config/schema.js";
import type { ConditionName, Threshold } from "../event-data.js";
import type { ReadingValue } from "../sources/reading.js";

export type { ConditionName, Threshold } from "../event-data.js";

export interface Condition {
  readonly name: ConditionName;
  /** What the body reports as `threshold`. */
  readonly threshold: Threshold;
  /** False for `equals`, which compares text states. */
  readonly numeric: boolean;
  /** The alert condition holds (pending/firing). */
  readonly active: (v: number | string) => boolean;
  /** A firing alert may clear (hysteresis); by default `!active`. */
  readonly clear: (v: number | string) => boolean;
}

export const RATE_FACTOR = { s: 1, m: 60, h: 3600 } as const;

/**
 * The value a numeric condition compares. The engine hands numeric conditions numbers
 * only (text is counted as non-numeric before); NaN makes every comparison false, as
 * comparing such text with a number did.
 */
const n = (v: number | string): number => (typeof v === "number" ? v : Number.NaN);

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
    when: r.when,
    clear_when: r.clear_when,
    stale_after: r.stale_after,
  };
  return createHash("sha256").update(JSON.stringify(core)).digest("hex").slice(0, 16);
}

function sortKeys(o: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of Object.keys(o).sort()) {
    const v = o[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}

export function compileCondition(r: RuleConfig): Condition | undefined {
  if (r.above !== undefined) {
    const t = r.above;
    const c = r.clear_below;
    return {
      name: "above",
      threshold: t,
      numeric: true,
      active: (v) => n(v) > t,
      clear: c === undefined ? (v) => !(n(v) > t) : (v) => n(v) < c,
    };
  }
  if (r.below !== undefined) {
    const t = r.below;
    const c = r.clear_above;
    return {
      name: "below",
      threshold: t,
      numeric: true,
      active: (v) => n(v) < t,
      clear: c === undefined ? (v) => !(n(v) < t) : (v) => n(v) > c,
    };
  }
  if (r.between !== undefined) {
    const [lo, hi] = r.between;
    const active = (v: number | string) => n(v) >= lo && n(v) <= hi;
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
      active: (v) => n(v) < lo || n(v) > hi,
      clear: (v) => (cLo === undefined ? n(v) >= lo : n(v) > cLo) && (cHi === undefined ? n(v) <= hi : n(v) < cHi),
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
      active: (v) => n(v) > t,
      clear: (v) => !(n(v) > t),
    };
  }
  if (r.rate_below !== undefined) {
    const t = r.rate_below;
    return {
      name: "rate_below",
      threshold: t,
      numeric: true,
      active: (v) => n(v) < t,
      clear: (v) => !(n(v) < t),
    };
  }
  return undefined;
}
