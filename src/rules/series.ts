/**
 * The series machines, one per kind of rule that keeps state per series. A new kind of
 * rule with series state is a class implementing SeriesMachine (core.ts) in its own
 * file, a member of CompiledRule (compile.ts), and a case in each function here.
 */

import { AbsentSeries } from "./absent.js";
import { AlertSeries } from "./alert.js";
import type { SeriesRule } from "./compile.js";
import type { EngineCore, SeriesMachine } from "./core.js";

/** A new series of `rule` (its first reading has passed admission). */
export function newSeries(rule: SeriesRule, key: string, sensor: string, metric: string, now: number): SeriesMachine {
  switch (rule.kind) {
    case "alert":
      return new AlertSeries(rule, key, sensor, metric, now);
    case "absent":
      return new AbsentSeries(rule, key, sensor, metric, now);
  }
}

/** A series of `rule` from its stored row; undefined when the row holds nothing it can keep. */
export function restoreSeries(
  core: EngineCore,
  rule: SeriesRule,
  key: string,
  sensor: string,
  metric: string,
  st: Record<string, unknown>,
  now: number,
): SeriesMachine | undefined {
  switch (rule.kind) {
    case "alert":
      return AlertSeries.restore(core, rule, key, sensor, metric, st, now);
    case "absent":
      return AbsentSeries.restore(core, rule, key, sensor, metric, st, now);
  }
}
