/**
 * Checks that a rule makes sense beyond its field types, with messages that say what to
 * write instead. Used by the config loader's crossCheck (which adds file positions) and
 * testable without YAML. `given(key)` tells whether the key was written in the file, so
 * keys with defaults (rate_per, rate_window) can be reported when they would do nothing.
 */
import type { RuleConfig } from "../config/schema.js";
import { isDataField } from "../event-data.js";
import { compileExpression, ExpressionError, type ExpressionResult } from "./expression.js";

export interface RuleProblem {
  /** Path under the rule, e.g. ["clear_below"] or ["aggregate", "over"]. */
  path: (string | number)[];
  message: string;
  /** For an expression: the 1-based column inside it. */
  column?: number;
}

/** Compiles one expression; a problem at its column if it does not compile. */
export function checkExpression(
  source: string,
  want: ExpressionResult,
  path: (string | number)[],
): RuleProblem | undefined {
  try {
    compileExpression(source, want);
    return undefined;
  } catch (err) {
    if (!(err instanceof ExpressionError)) throw err;
    return { path, message: err.message, column: err.column };
  }
}

const THRESHOLD_KEYS = ["above", "below", "between", "outside", "equals"] as const;
const RATE_KEYS = ["rate_above", "rate_below"] as const;

export function checkRule(r: RuleConfig, given: (key: string) => boolean): RuleProblem[] {
  const problems: RuleProblem[] = [];
  const add = (path: (string | number)[], message: string) => problems.push({ path, message });

  const thresholds = THRESHOLD_KEYS.filter((k) => r[k] !== undefined);
  const rates = RATE_KEYS.filter((k) => r[k] !== undefined);
  const forward = r.forward !== undefined && r.forward !== false;
  const groups = [
    thresholds.length > 0 ? "a threshold (above, below, between, outside, equals)" : undefined,
    rates.length > 0 ? "a rate (rate_above, rate_below)" : undefined,
    r.absent_for !== undefined ? "absent_for" : undefined,
    r.when !== undefined ? "when" : undefined,
    forward ? "forward" : undefined,
  ].filter((g): g is string => g !== undefined);

  for (const k of ["clear_when", "stale_after"] as const) {
    if (r[k] !== undefined && r.when === undefined) add([k], "only works with when");
  }
  if (groups.length === 0) {
    add(
      [],
      r.forward === false
        ? "forward: false is no condition; give above, below, between, outside, equals, rate_above, rate_below, when, absent_for or forward"
        : "needs a condition: above, below, between, outside, equals, rate_above, rate_below, when, absent_for or forward",
    );
    return problems;
  }
  if (groups.length > 1) {
    add([], `give one kind of condition per rule, not ${groups.join(" and ")}; write one rule for each`);
    return problems;
  }
  const second = thresholds[1];
  if (second !== undefined) {
    const hint =
      thresholds.length === 2 && thresholds.includes("above") && thresholds.includes("below")
        ? "; for 'above or below' write outside: [low, high]"
        : "";
    add([second], `give one of ${thresholds.join(", ")}, not several${hint}`);
  }
  if (rates.length > 1) add(["rate_below"], "give either rate_above or rate_below; write one rule for each");

  const cond = thresholds[0] ?? rates[0];
  const isThreshold = thresholds.length > 0;
  const isRate = rates.length > 0;
  const isAlert = isThreshold || isRate || r.when !== undefined;

  if (r.when !== undefined) {
    const p = checkExpression(r.when, "bool", ["when"]);
    if (p) problems.push(p);
    if (r.clear_when !== undefined) {
      const c = checkExpression(r.clear_when, "bool", ["clear_when"]);
      if (c) problems.push(c);
    }
    if (given("match.metric"))
      add(["match", "metric"], "does not apply to when rules (the expression names the metrics)");
    if (r.stale_after !== undefined && r.stale_after <= 0) add(["stale_after"], "must be longer than 0s");
  }

  // Hysteresis: the clear threshold must lie on the clear side of the alert threshold.
  if (r.clear_below !== undefined) {
    if (cond === "above" && r.above !== undefined && r.clear_below > r.above) {
      add(["clear_below"], `must be at or below the threshold above: ${r.above}`);
    } else if (cond === "outside" && r.outside !== undefined && r.clear_below > r.outside[1]) {
      add(["clear_below"], `must be at or below the high end of outside (${r.outside[1]})`);
    } else if (cond !== "above" && cond !== "outside") {
      add(["clear_below"], "only works with above or outside (it is when a high value counts as cleared)");
    }
  }
  if (r.clear_above !== undefined) {
    if (cond === "below" && r.below !== undefined && r.clear_above < r.below) {
      add(["clear_above"], `must be at or above the threshold below: ${r.below}`);
    } else if (cond === "outside" && r.outside !== undefined && r.clear_above < r.outside[0]) {
      add(["clear_above"], `must be at or above the low end of outside (${r.outside[0]})`);
    } else if (cond !== "below" && cond !== "outside") {
      add(["clear_above"], "only works with below or outside (it is when a low value counts as cleared)");
    }
  }
  if (
    cond === "outside" &&
    r.clear_above !== undefined &&
    r.clear_below !== undefined &&
    r.clear_above >= r.clear_below
  ) {
    add(["clear_above"], `must be below clear_below (${r.clear_below}), or no value could ever clear the alert`);
  }
  for (const k of ["between", "outside"] as const) {
    const range = r[k];
    if (range && range[0] >= range[1]) add([k], "must be [low, high] with low < high");
  }

  if (r.aggregate !== undefined) {
    if (!isThreshold || cond === "equals") {
      add(["aggregate"], "only works with above, below, between or outside (it replaces the value they compare)");
    }
    if (r.aggregate.over <= 0) add(["aggregate", "over"], "must be longer than 0s");
  }
  if (!isRate) {
    for (const k of ["rate_per", "rate_window"] as const) {
      if (given(k)) add([k], "only works with rate_above or rate_below");
    }
  } else if (r.rate_window <= 0) {
    add(["rate_window"], "must be longer than 0s");
  }

  if (!isAlert) {
    for (const k of ["for", "clear_for", "repeat_every", "cooldown"] as const) {
      if (r[k] !== undefined) {
        add(
          [k],
          r.absent_for !== undefined
            ? `does not apply to absent_for rules${k === "for" ? " (absent_for is itself the duration)" : ""}`
            : "does not apply to forward rules",
        );
      }
    }
  }
  if (r.repeat_every !== undefined && r.repeat_every <= 0) add(["repeat_every"], "must be longer than 0s");
  if (r.absent_for !== undefined && r.absent_for <= 0) add(["absent_for"], "must be longer than 0s");
  if (typeof r.forward === "object" && r.forward.batch_every <= 0) {
    add(["forward", "batch_every"], "must be longer than 0s");
  }

  for (const k of Object.keys(r.extra)) {
    // The body's own fields (event-data.ts) come first; extra must not replace them.
    if (isDataField(k)) {
      add(["extra", k], `is a field edgehook sets in the body; choose another name`);
    }
  }
  return problems;
}
