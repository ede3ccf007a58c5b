/**
 * `forward` rules: readings sent on as telemetry, each as a `reading` event, or buffered
 * and sent as one `readings` event every `batch_every` (or when MAX_BATCH are waiting).
 * Late readings are forwarded too (telemetry wants every point; the body carries its
 * time). Each buffered reading has a small state row, so an acknowledged reading
 * survives a crash before its batch is sent; the flush removes the rows in the same
 * commit. A batched rule changed or removed by a reload sends what it buffered first.
 */
import type { BatchedReading } from "../event-data.js";
import type { SeriesStateRow } from "../events.js";
import { seriesKey } from "../series-key.js";
import type { Reading, ReadingValue } from "../sources/reading.js";
import type { CompiledRule, ForwardRule } from "./compile.js";
import { type Due, type EngineCore, iso, mergeLabels } from "./core.js";

/** Readings per `readings` event at most; a full buffer is sent before `batch_every`. */
export const MAX_BATCH = 1000;
/** Sensor part of the series key of buffered batch readings (the metric is a sequence number). */
export const BATCH_SENSOR = "\u0000batch";

interface BatchEntry {
  key: string;
  sensor: string;
  metric: string;
  value: ReadingValue;
  ts: number;
  labels: Readonly<Record<string, string>>;
  /** The row written for it in the current call, if any (see flush). */
  row: SeriesStateRow | undefined;
}

class BatchBuffer implements Due {
  rule: ForwardRule;
  readonly key: string;
  entries: BatchEntry[] = [];
  dueAt: number | undefined = undefined;
  dueToken = 0;
  gone = false;

  constructor(rule: ForwardRule) {
    this.rule = rule;
    this.key = seriesKey(rule.name, "*", "*");
  }

  due(core: EngineCore, now: number): void {
    if (this.entries.length > 0) this.flush(core, now);
  }

  /** Sends what is buffered as one `readings` event and removes the entries' rows. */
  flush(core: EngineCore, now: number): void {
    const entries = this.entries;
    this.entries = [];
    this.dueAt = undefined;
    const rule = this.rule;
    let newest = Number.NEGATIVE_INFINITY;
    let unwritten: Set<SeriesStateRow> | undefined;
    const readings = entries.map((e): BatchedReading => {
      if (e.ts > newest) newest = e.ts;
      // Written in this same call: take the row back instead of writing and removing it.
      if (e.row !== undefined) {
        unwritten ??= new Set();
        unwritten.add(e.row);
      } else core.out.removedStates.push({ rule: rule.name, series: e.key });
      return {
        sensor: e.sensor,
        metric: e.metric,
        value: e.value,
        ts: iso(e.ts),
        labels: mergeLabels(e.labels, rule.cfg.labels),
      };
    });
    if (unwritten !== undefined) {
      const drop = unwritten;
      core.out.states = core.out.states.filter((r) => !drop.has(r));
    }
    core.emit("readings", rule, this.key, newest, now, { count: readings.length, readings });
  }

  /** Schedules the flush of what restore or a reload left in the buffer. */
  requeue(core: EngineCore, now: number): void {
    this.dueAt = undefined;
    if (this.entries.length > 0 && this.rule.batchMs !== undefined) core.queue.schedule(this, now + this.rule.batchMs);
  }
}

export class Forwarder {
  readonly #batches = new Map<string, BatchBuffer>();
  /** Sequence of buffered-reading keys; never reuses the key of a stored one. */
  #seq = 0;
  /** Batch entries whose row was written in the current call. */
  #fresh: BatchEntry[] = [];

  reading(core: EngineCore, rule: ForwardRule, r: Reading, now: number): void {
    if (rule.batchMs === undefined) {
      core.emit("reading", rule, seriesKey(rule.name, r.sensor, r.metric), r.ts, now, {
        sensor: r.sensor,
        metric: r.metric,
        value: r.value,
        labels: mergeLabels(r.labels, rule.cfg.labels),
        source: r.source,
      });
      return;
    }
    const buf = this.#buffer(rule);
    const key = seriesKey(rule.name, BATCH_SENSOR, String(this.#seq++));
    const row: SeriesStateRow = {
      rule: rule.name,
      series: key,
      version: rule.version,
      state: { sensor: r.sensor, metric: r.metric, value: r.value, ts: r.ts, labels: r.labels },
    };
    core.out.states.push(row);
    const entry: BatchEntry = {
      key,
      sensor: r.sensor,
      metric: r.metric,
      value: r.value,
      ts: r.ts,
      labels: r.labels,
      row,
    };
    buf.entries.push(entry);
    this.#fresh.push(entry);
    if (buf.entries.length >= MAX_BATCH) buf.flush(core, now);
    else if (buf.entries.length === 1) core.queue.schedule(buf, now + rule.batchMs);
  }

  /** End of a call: the rows written in it are committed with it. */
  endCall(): void {
    if (this.#fresh.length === 0) return;
    for (const e of this.#fresh) e.row = undefined;
    this.#fresh = [];
  }

  /** Restore: a stored buffered reading's sequence number (new keys start after it). */
  reserve(seq: number): void {
    if (Number.isInteger(seq) && seq >= this.#seq) this.#seq = seq + 1;
  }

  /** Restore: a stored buffered reading goes back into its rule's buffer. */
  restoreEntry(
    rule: ForwardRule,
    key: string,
    sensor: string,
    metric: string,
    value: ReadingValue,
    ts: number,
    labels: Readonly<Record<string, string>>,
  ): void {
    this.#buffer(rule).entries.push({ key, sensor, metric, value, ts, labels, row: undefined });
  }

  /** Reload: a rule of the same version keeps its buffer; another one sends it first. */
  reload(core: EngineCore, nextByName: ReadonlyMap<string, CompiledRule>, now: number): void {
    for (const [name, buf] of this.#batches) {
      const nr = nextByName.get(name);
      if (nr && nr.kind === "forward" && nr.version === buf.rule.version) {
        buf.rule = nr;
        continue;
      }
      // Nothing a forward rule buffered is lost on reload: it goes out under the old rule.
      if (buf.entries.length > 0) buf.flush(core, now);
      buf.gone = true;
      this.#batches.delete(name);
    }
  }

  /** Schedules every buffer that holds readings (after restore, or a reload cleared the queue). */
  requeue(core: EngineCore, now: number): void {
    for (const buf of this.#batches.values()) buf.requeue(core, now);
  }

  #buffer(rule: ForwardRule): BatchBuffer {
    let buf = this.#batches.get(rule.name);
    if (buf === undefined) {
      buf = new BatchBuffer(rule);
      this.#batches.set(rule.name, buf);
    }
    return buf;
  }
}
