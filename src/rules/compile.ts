/**
 * Turns a validated RuleConfig into what the engine runs: a CompiledRule, one member per
 * kind of rule, so the code of each kind reads only fields that kind has. A new kind of
 * rule is a new member here, built by compileRule, and a series machine for it
 * (series.ts lists the machines).
 *
 * - `alert`: a threshold or rate condition over one metric (above, below, between,
 *   outside, equals, rate_above, rate_below), optionally over an aggregate window; the
 *   pending → firing → clearing → ok state machine of alert.ts.
 *   A `when` rule is an alert too: its condition is a CEL expression over several
 *   metrics (compound.ts), judged by the same machine; `compound` holds its expressions.
 * - `absent`: `absent_for`, the silence watch of absent.ts.
 * - `forward`: `forward`, readings sent on as telemetry, one by one or in batches
 *   (forward.ts). Forward rules keep no series state.
 */
import type { RuleConfig } from "../config/schema.js";
import { SEVERITY_PRIORITY } from "../events.js";
import { type Compound, compileCompound, whenCondition } from "./compound.js";
import { type Condition, compileCondition, RATE_FACTOR, ruleVersion } from "./conditions.js";
import { compileGlob, hasWildcard, type Matcher } from "./glob.js";
import type { AggregateFn } from "./windows.js";

/** What every kind of rule has: its name, what it matches and how its events rank. */
interface RuleBase {
  readonly cfg: RuleConfig;
  readonly name: string;
  /** Hash of the state-defining part of the rule; stored with each series state. */
  readonly version: string;
  readonly sensor: Matcher;
  readonly metric: Matcher;
  readonly labels: readonly (readonly [string, string])[] | undefined;
  readonly priority: number;
}

export interface AlertRule extends RuleBase {
  readonly kind: "alert";
  readonly condition: Condition;
  /** Compare the aggregate of a window instead of each reading (not with rates). */
  readonly aggregate: { readonly fn: AggregateFn; readonly overMs: number } | undefined;
  /** Rate window and the factor from per-second to the rule's `rate_per`. */
  readonly rate: { readonly windowMs: number; readonly factor: number } | undefined;
  /** A `when` rule: its expressions and inputs (compound.ts). */
  readonly compound: Compound | undefined;
  readonly forMs: number;
  readonly clearForMs: number;
  readonly repeatMs: number | undefined;
  readonly cooldownMs: number | undefined;
}

export interface AbsentRule extends RuleBase {
  readonly kind: "absent";
  readonly absentMs: number;
  /** absent_for with `match.metric: "*"` watches whole sensors (any metric keeps it alive). */
  readonly perSensor: boolean;
  /** Literal sensor (and metric) names the rule can watch before the first reading. */
  readonly knownSensor: string | undefined;
  readonly knownMetric: string | undefined;
}

export interface ForwardRule extends RuleBase {
  readonly kind: "forward";
  /** `forward.batch_every`; undefined sends each reading as it comes. */
  readonly batchMs: number | undefined;
}

export type CompiledRule = AlertRule | AbsentRule | ForwardRule;
export type RuleKind = CompiledRule["kind"];
/** The kinds of rule that keep state per series (each has a machine in series.ts). */
export type SeriesRule = Exclude<CompiledRule, ForwardRule>;

export function compileRule(r: RuleConfig): CompiledRule {
  const labelPairs = r.match.labels ? Object.entries(r.match.labels) : [];
  // Each kind is one object literal with every field written out, in the same order for
  // every rule of that kind: one hidden class per kind, so the per-reading code of a kind
  // reads its rule's fields monomorphically. Spreading a shared base object instead gave
  // most rules a hidden class of their own, and those reads went megamorphic (issue 16).
  const cfg = r;
  const name = r.name;
  const version = ruleVersion(r);
  const sensor = compileGlob(r.match.sensor);
  const metric = compileGlob(r.match.metric);
  const labels = labelPairs.length > 0 ? labelPairs : undefined;
  const priority = r.priority ?? SEVERITY_PRIORITY[r.severity];
  const compound = compileCompound(r);
  if (compound !== undefined && r.when !== undefined) {
    // The readings that concern a `when` rule are those of the metrics it reads.
    const own = (m: string) => compound.own.has(m);
    return alertRule(r, version, sensor, own, labels, priority, whenCondition(r.when), compound);
  }
  const condition = compileCondition(r);
  if (condition !== undefined) {
    return alertRule(r, version, sensor, metric, labels, priority, condition, undefined);
  }
  if (r.absent_for !== undefined) {
    const perSensor = /^\*+$/.test(r.match.metric);
    return {
      cfg,
      name,
      version,
      sensor,
      metric,
      labels,
      priority,
      kind: "absent",
      absentMs: r.absent_for,
      perSensor,
      knownSensor: hasWildcard(r.match.sensor) ? undefined : r.match.sensor,
      knownMetric: !perSensor && !hasWildcard(r.match.metric) ? r.match.metric : undefined,
    };
  }
  return {
    cfg,
    name,
    version,
    sensor,
    metric,
    labels,
    priority,
    kind: "forward",
    batchMs: typeof r.forward === "object" ? r.forward.batch_every : undefined,
  };
}

/**
 * Both kinds of alert (a threshold or rate condition, and a `when` expression) come from this
 * one literal, so they share one hidden class whatever their condition.
 */
function alertRule(
  r: RuleConfig,
  version: string,
  sensor: Matcher,
  metric: Matcher,
  labels: AlertRule["labels"],
  priority: number,
  condition: Condition,
  compound: Compound | undefined,
): AlertRule {
  const isRate = compound === undefined && (r.rate_above !== undefined || r.rate_below !== undefined);
  return {
    cfg: r,
    name: r.name,
    version,
    sensor,
    metric,
    labels,
    priority,
    kind: "alert",
    condition,
    aggregate:
      compound === undefined && r.aggregate && !isRate ? { fn: r.aggregate.fn, overMs: r.aggregate.over } : undefined,
    rate: isRate ? { windowMs: r.rate_window, factor: RATE_FACTOR[r.rate_per] } : undefined,
    compound,
    forMs: r.for ?? 0,
    clearForMs: r.clear_for ?? 0,
    repeatMs: r.repeat_every || undefined,
    cooldownMs: r.cooldown || undefined,
  };
}
