/**
 * Restart: the engine takes back the rows committed before it (`RuleEngine.restore`).
 *
 * A row of an unchanged rule gives back its series as it was (alert.ts and absent.ts say
 * how each kind continues) or its buffered forward reading (forward.ts). A row whose rule
 * changed while the agent was down is adopted as a reload would adopt it (reload.ts), if
 * it can be; otherwise it no longer fits a rule (removed, or changed beyond that): an
 * open alert or silence is closed for its receivers with what the row remembers (reason
 * "rule removed" or "rule changed"), and the row is removed. Buffered readings of a
 * forward rule that still exists go out under its current definition; those of a removed
 * rule are counted in `stats.droppedBatched`. All this goes out with the next batch.
 */
import { type EventFields, type EventOrigin, newEvent, type SeriesStateRow } from "../events.js";
import { parseSeriesKey, type SeriesId, seriesKey } from "../series-key.js";
import type { CompiledRule, ForwardRule } from "./compile.js";
import {
  dataValue,
  EMPTY_LABELS,
  type EngineCore,
  isLabels,
  isNameList,
  iso,
  isReadingValue,
  isRecord,
  isSeverity,
  num,
} from "./core.js";
import { BATCH_SENSOR, type Forwarder } from "./forward.js";
import { restoreSeries } from "./series.js";

export function restoreRows(
  core: EngineCore,
  byName: ReadonlyMap<string, CompiledRule>,
  forwarder: Forwarder,
  rows: readonly SeriesStateRow[],
  now: number,
): void {
  const batchRows: { seq: number; row: SeriesStateRow; rule: ForwardRule }[] = [];
  // New buffered readings must never reuse the key of a stored one, whatever its rule.
  for (const row of rows) {
    const id = parseSeriesKey(row.series);
    forwarder.reserve(id?.sensor === BATCH_SENSOR ? Number(id.metric) : Number.NaN);
  }
  for (const row of rows) {
    const rule = byName.get(row.rule);
    const id = parseSeriesKey(row.series);
    const st = isRecord(row.state) ? row.state : undefined;
    if (!rule || rule.version !== row.version || id === undefined || st === undefined) {
      const adopted = rule !== undefined && restoreChanged(core, rule, row, id, st, now);
      if (!adopted) endStaleRow(core, forwarder, row, id, st, rule ? "rule changed" : "rule removed", rule);
      continue;
    }
    const { sensor, metric } = id;
    if (rule.kind === "forward") {
      if (sensor === BATCH_SENSOR && rule.batchMs !== undefined) {
        batchRows.push({ seq: Number(metric), row, rule });
      } else {
        core.carry.removedStates.push({ rule: row.rule, series: row.series });
      }
      continue;
    }
    const series = restoreSeries(core, rule, row.series, sensor, metric, st, now);
    if (!series) {
      core.stats.staleStates++;
      core.carry.removedStates.push({ rule: row.rule, series: row.series });
      continue;
    }
    const old = core.series.get(series.key);
    if (old) old.gone = true;
    core.series.set(series.key, series);
    series.schedule(core, now);
  }
  batchRows.sort((x, y) => x.seq - y.seq);
  for (const { row, rule } of batchRows) {
    const st = row.state;
    if (!isRecord(st)) continue;
    const { sensor, metric, ts, value } = st;
    if (typeof sensor !== "string" || typeof metric !== "string" || typeof ts !== "number") continue;
    if (!isReadingValue(value)) continue;
    forwarder.restoreEntry(rule, row.series, sensor, metric, value, ts, isLabels(st.labels) ? st.labels : EMPTY_LABELS);
  }
  forwarder.requeue(core, now);
}

/** A stored row whose rule changed while the agent was down: adopted like a reload does, if it can be. */
function restoreChanged(
  core: EngineCore,
  rule: CompiledRule,
  row: SeriesStateRow,
  id: SeriesId | undefined,
  st: Record<string, unknown> | undefined,
  now: number,
): boolean {
  if (id === undefined || st === undefined || id.sensor === BATCH_SENSOR) return false;
  if (rule.kind === "forward") return false;
  const { sensor, metric } = id;
  const key = seriesKey(rule.name, sensor, metric);
  if (key !== row.series) return false;
  const s = restoreSeries(core, rule, key, sensor, metric, st, now);
  if (s === undefined) return false;
  if (!s.adopt(core, rule, typeof st.basis === "string" ? st.basis : undefined)) {
    s.gone = true;
    return false;
  }
  const old = core.series.get(key);
  if (old) old.gone = true;
  core.series.set(key, s);
  core.mark(s);
  s.schedule(core, now);
  return true;
}

/**
 * A stored row that no longer fits a rule (removed or changed while the agent was
 * down): an open alert or silence is closed with what the row remembers, and the row
 * is removed. Both go out with the next batch.
 */
function endStaleRow(
  core: EngineCore,
  forwarder: Forwarder,
  row: SeriesStateRow,
  id: SeriesId | undefined,
  st: Record<string, unknown> | undefined,
  reason: "rule changed" | "rule removed",
  current: CompiledRule | undefined,
): void {
  core.stats.staleStates++;
  core.carry.removedStates.push({ rule: row.rule, series: row.series });
  if (st === undefined || id === undefined) return;
  const { sensor, metric } = id;
  const now = core.now;
  if (sensor === BATCH_SENSOR) {
    // Buffered telemetry of a forward rule: send it under the rule's current definition
    // when the rule still exists, otherwise there is nobody to send it to.
    const { ts, value } = st;
    if (
      current &&
      current.kind === "forward" &&
      current.batchMs !== undefined &&
      typeof ts === "number" &&
      isReadingValue(value)
    ) {
      core.carry.removedStates.pop();
      core.stats.staleStates--;
      const labels = isLabels(st.labels) ? st.labels : EMPTY_LABELS;
      forwarder.restoreEntry(current, row.series, String(st.sensor), String(st.metric), value, ts, labels);
    } else core.stats.droppedBatched++;
    return;
  }
  const active = st.phase === "firing" || st.phase === "clearing" || st.phase === "silent";
  if (!active || !isNameList(st.notify)) return;
  const origin: EventOrigin = {
    agent: core.agentId,
    rule: row.rule,
    severity: isSeverity(st.severity) ? st.severity : "warning",
    priority: num(st.priority, 0),
    notify: st.notify,
  };
  const silent = st.phase === "silent";
  const fields: EventFields<"alert.resolved" | "sensor.returned"> = {
    sensor,
    metric,
    value: dataValue(st.value),
    severity: origin.severity,
    labels: isLabels(st.labels) ? st.labels : {},
    since: iso(num(st.since, now)),
    duration_s: Math.max(0, Math.round((now - num(silent ? st.silence_from : st.fired_at, now)) / 1000)),
    reason,
  };
  // No `extra`: the rule that had it is gone or changed.
  core.carry.events.push(newEvent(silent ? "sensor.returned" : "alert.resolved", origin, row.series, now, now, fields));
}
